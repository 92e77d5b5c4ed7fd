"""`kdlab bench [step|methods]`: speed benchmarks, reported as ratios measured in one run."""

from __future__ import annotations

from kdlab.cli.common import console, positive_int
from kdlab.report.tables import rich_table


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: engine step overhead (step), per-method cost (methods)")
    p.add_argument("what", nargs="?", default="step", choices=["step", "methods"])
    # Defaults depend on the benchmark: step resnet32->resnet8, 20 steps x 3; methods resnet20->resnet8, 10 x 2.
    p.add_argument("--teacher", default=None)
    p.add_argument("--student", default=None)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=None)
    p.add_argument("--methods", default=None, help="methods: comma-separated names (default: the whole zoo)")
    p.add_argument("--device", default="cpu", help="methods: cpu or cuda[:N]")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.what == "methods":
        return cmd_bench_methods(args)
    args.teacher, args.student = args.teacher or "resnet32", args.student or "resnet8"
    args.steps, args.repeats = args.steps or 20, args.repeats or 3
    from kdlab.bench.step_overhead import BenchSetup, run

    s = BenchSetup(teacher=args.teacher, student=args.student, batch_size=args.batch_size, steps=args.steps,
                   repeats=args.repeats)
    console.print(f"step overhead: teacher {s.teacher}, student {s.student}, batch {s.batch_size}, "
                  f"{s.steps} steps × {s.repeats} repeats, CPU threads {__import__('torch').get_num_threads()}")
    r = run(s, log=console.print)
    rows = [
        ["hand-written KD step", f"{r['hand_kd_ms']:.1f} ms", "1.00"],
        ["kdlab KD step", f"{r['kdlab_kd_ms']:.1f} ms", f"{r['engine_overhead_ratio']:.3f}"],
        ["kdlab CE step", f"{r['kdlab_ce_ms']:.1f} ms", f"{r['kdlab_ce_ms'] / r['hand_kd_ms']:.3f}"],
    ]
    console.print(rich_table(["step", "median time", "÷ hand-written KD"], rows, title="step time"))
    console.print(f"engine overhead (kdlab KD / hand-written KD): {r['engine_overhead_ratio']:.3f}   "
                  f"distillation cost (kdlab KD / kdlab CE): {r['kd_over_ce_ratio']:.3f}")
    return 0


def cmd_bench_methods(args) -> int:
    import torch

    from kdlab.bench.method_cost import ZOO, CostSetup, run
    from kdlab.errors import KdlabError

    if not (args.device == "cpu" or args.device.startswith("cuda")):
        raise KdlabError(f"--device must be cpu or cuda[:N] (got {args.device!r})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise KdlabError("--device cuda: no CUDA device is visible; use --device cpu")
    d = CostSetup()
    s = CostSetup(teacher=args.teacher or d.teacher, student=args.student or d.student, batch_size=args.batch_size,
                  steps=args.steps or d.steps, repeats=args.repeats or d.repeats, device=args.device,
                  methods=[m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(ZOO))
    unknown = [m for m in s.methods if m not in ZOO]
    if unknown:
        raise KdlabError(f"unknown method(s) {', '.join(unknown)} for the cost benchmark; known: {', '.join(ZOO)}")
    threads = __import__("os").environ.get("OMP_NUM_THREADS", "1")
    mem = "CUDA max_memory_allocated" if s.device != "cpu" else "peak RSS (VmHWM)"
    console.print(f"method cost: teacher {s.teacher}, student {s.student}, batch {s.batch_size}, {s.image}x{s.image} "
                  f"random data, {s.num_classes} classes, {s.steps} steps x {s.repeats} repeats, {s.device}, "
                  f"threads {threads}; memory = {mem}")
    rows = run(s, log=console.print)
    mib = 2**20
    table = [[r["method"], f"{r['step_s'] * 1e3:.1f}", f"{r['time_ratio']:.2f}", f"{r['peak_bytes'] / mib:.0f}",
              f"{r['extra_bytes'] / mib:.0f}", f"{r['extra_ratio']:.2f}"] for r in rows]
    console.print(rich_table(["method", "step ms", "time ÷ CE", "peak MiB", "extra MiB", "extra ÷ CE"], table,
                             title="per-method cost"))
    return 0
