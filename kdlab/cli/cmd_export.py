"""`kdlab export RUN --format safetensors|hf|onnx --out DIR`: the distilled model of a finished
run in formats other tools read, and a table of what distillation bought (teacher vs student)."""

from __future__ import annotations

from kdlab.cli.common import console, positive_int


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a finished run's model (safetensors, hf, onnx) and compare it with its teacher")
    p.add_argument("run", help="run id (or a unique prefix; `kdlab runs` lists them)")
    p.add_argument("--format", required=True, choices=["safetensors", "hf", "onnx"], dest="fmt",
                   help="safetensors: model.safetensors; hf: a save_pretrained folder; onnx: model.onnx checked "
                        "against onnxruntime")
    p.add_argument("--out", required=True, help="folder to write into (created)")
    p.add_argument("--weights", choices=["best", "last"], default="best",
                   help="best: the best-validation epoch's weights (default); last: the last epoch's")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="test samples per timed batch (default: the run's data.batch_size)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed runs per model (the median is shown)")
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from kdlab.report.tables import rich_table
    from kdlab.stages.export import WEIGHTS, export_run
    from kdlab.store.runstore import RunStore

    r = export_run(RunStore(args.store), args.run, args.fmt, args.out, args.weights, args.batch_size, args.repeats)
    console.print(f"exported the {r.kind} of {r.run_id} ({WEIGHTS[r.weights]}, epoch {r.epoch + 1} of {r.epochs}) "
                  f"as {r.fmt}: {', '.join(map(str, r.written))}", highlight=False)
    if r.max_abs_diff is not None:
        console.print(f"onnxruntime vs torch on the run's test samples (batches of {' and '.join(map(str, r.checked_samples))}): "
                      f"largest absolute logit difference {r.max_abs_diff:.2e}", highlight=False)
    ort = any(m.onnxruntime_ms is not None for m in r.rows)
    header = ["model", "source", "params", "file size", "torch ms/batch"] + (["onnxruntime ms/batch"] if ort else [])
    rows = [[m.role, m.source, f"{m.params:,}", _size(m.file_bytes), f"{m.torch_ms:.2f}"]
            + ([f"{m.onnxruntime_ms:.2f}" if m.onnxruntime_ms is not None else "–"] if ort else []) for m in r.rows]
    console.print(rich_table(header, rows, title="what distillation bought"))
    console.print(f"latency: median of {r.repeats} runs on a batch of {r.batch} test samples, CPU, "
                  f"{r.threads} thread(s); file size: the exported file, the teacher's stored weights", highlight=False)
    for note in r.notes:
        console.print(f"[yellow]{note}[/yellow]", highlight=False)
    return 0


def _size(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
