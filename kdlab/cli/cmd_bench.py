"""`kdlab bench [step|methods|lm-loss|loader|epoch]`: speed and memory benchmarks, reported as ratios measured in one run."""

from __future__ import annotations

from kdlab.cli.common import console, positive_int
from kdlab.report.tables import rich_table


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: engine step overhead (step), per-method cost (methods), "
                                     "chunked vs naive LM divergence (lm-loss), streamed vs in-memory data (loader), "
                                     "time outside the steps (epoch), LM teacher-logit cache size and step time (lm-cache)")
    p.add_argument("what", nargs="?", default="step", choices=["step", "methods", "lm-loss", "loader", "epoch", "lm-cache"])
    # Defaults depend on the benchmark: step resnet32->resnet8, 20 steps x 3; methods resnet20->resnet8, 10 x 2.
    p.add_argument("--teacher", default=None)
    p.add_argument("--student", default=None)
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 64; lm-loss: 4 sequences")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=None)
    p.add_argument("--methods", default=None, help="methods: comma-separated names (default: the whole zoo)")
    p.add_argument("--device", default="cpu", help="methods, lm-loss: cpu or cuda[:N]")
    p.add_argument("--vocab", type=int, default=32000, help="lm-loss: vocabulary size")
    p.add_argument("--tokens", type=int, default=512, help="lm-loss: tokens per sequence")
    p.add_argument("--chunk-tokens", type=int, default=None, help="lm-loss: tokens per chunk (default: automatic)")
    p.add_argument("--divergences", default=None, help="lm-loss: comma-separated (default: all seven)")
    p.add_argument("--fast", action="store_true",
                   help="step: train.compile, channels_last and bf16 autocast against eager float32 on the same KD step")
    p.add_argument("--every", type=positive_int, default=5, help="epoch: checkpoint_every and eval_every to compare with 1")
    p.add_argument("--images", type=positive_int, default=2048, help="loader: images in the folder")
    p.add_argument("--image-size", type=positive_int, default=32, help="loader: image side in pixels")
    p.add_argument("--workers", default="0,1,2,4", help="loader: comma-separated worker counts to time")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.what == "methods":
        return cmd_bench_methods(args)
    if args.what == "lm-loss":
        return cmd_bench_lm_loss(args)
    if args.what == "epoch":
        return cmd_bench_epoch(args)
    if args.what == "loader":
        return cmd_bench_loader(args)
    if args.what == "lm-cache":
        return cmd_bench_lm_cache(args)
    args.batch_size = args.batch_size or 64
    args.teacher, args.student = args.teacher or "resnet32", args.student or "resnet8"
    args.steps, args.repeats = args.steps or 20, args.repeats or 3
    from kdlab.bench.step_overhead import BenchSetup, run

    s = BenchSetup(teacher=args.teacher, student=args.student, batch_size=args.batch_size, steps=args.steps,
                   repeats=args.repeats)
    if args.fast:
        return cmd_bench_fast_step(s)
    console.print(f"step overhead: teacher {s.teacher}, student {s.student}, batch {s.batch_size}, "
                  f"{s.steps} steps × {s.repeats} repeats, CPU threads {__import__('torch').get_num_threads()}")
    r = run(s, log=console.print)
    rows = [
        ["hand-written KD step", f"{r['hand_kd_ms']:.1f} ms", "1.00"],
        ["kdlab KD step", f"{r['kdlab_kd_ms']:.1f} ms", f"{r['engine_overhead_ratio']:.3f}"],
        ["kdlab CE step", f"{r['kdlab_ce_ms']:.1f} ms", f"{r['kdlab_ce_ms'] / r['hand_kd_ms']:.3f}"],
        ["kdlab KD step, teacher cached", f"{r['cached_kd_ms']:.1f} ms", f"{r['cached_kd_ms'] / r['hand_kd_ms']:.3f}"],
    ]
    console.print(rich_table(["step", "median time", "÷ hand-written KD"], rows, title="step time"))
    console.print(f"engine overhead (kdlab KD / hand-written KD): {r['engine_overhead_ratio']:.3f}   "
                  f"distillation cost (kdlab KD / kdlab CE): {r['kd_over_ce_ratio']:.3f}   "
                  f"with the teacher cached (cached KD / kdlab CE): {r['cached_kd_over_ce_ratio']:.3f}")
    return 0


def cmd_bench_fast_step(s) -> int:
    import torch

    from kdlab.bench.fast_step import run
    from kdlab.engine.fast_step import check_compile

    check_compile(torch.device("cpu"))
    console.print(f"faster step: teacher {s.teacher}, student {s.student}, KD (ce + kd), batch {s.batch_size}, "
                  f"{s.steps} steps × {s.repeats} rounds, CPU threads {torch.get_num_threads()}")
    r = run(s, log=console.print)
    rows = [[n, f"{v['ms']:.1f} ms", f"{v['ratio']:.3f}", " ".join(f"{x:.2f}" for x in v["per_round"]),
             f"{v['first_pass_s']:.1f} s"] for n, v in r.items()]
    console.print(rich_table(["step", "median time", "÷ eager float32 (median of rounds)", "per round",
                              "first pass (compiling)"], rows, title="faster step vs eager float32"))
    return 0


def cmd_bench_epoch(args) -> int:
    from kdlab.bench.epoch_overhead import EpochSetup, run

    d = EpochSetup()
    s = EpochSetup(model=args.student or d.model, batch_size=args.batch_size or d.batch_size, steps=args.steps or d.steps,
                   repeats=args.repeats or d.repeats, every=args.every)
    console.print(f"time outside the training steps: {s.model}, {s.steps} steps of {s.batch_size} and {s.val} "
                  f"validation samples per epoch, {s.epochs} epochs, {s.repeats} repeats")
    r = run(s, log=console.print)
    rows = [[f"checkpoint_every = eval_every = {k.split('_')[1]}", f"{100 * v:.1f}%"] for k, v in r.items()]
    console.print(rich_table(["setting", "share of the run outside the steps (median)"], rows, title="epoch overhead"))
    return 0


def check_device(device: str) -> None:
    import torch

    from kdlab.errors import KdlabError

    if not (device == "cpu" or device.startswith("cuda")):
        raise KdlabError(f"--device must be cpu or cuda[:N] (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KdlabError("--device cuda: no CUDA device is visible; use --device cpu")


def cmd_bench_methods(args) -> int:
    from kdlab.bench.method_cost import ZOO, CostSetup, run
    from kdlab.errors import KdlabError

    check_device(args.device)
    d = CostSetup()
    s = CostSetup(teacher=args.teacher or d.teacher, student=args.student or d.student, batch_size=args.batch_size or 64,
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


def cmd_bench_lm_loss(args) -> int:
    from kdlab.bench.lm_loss import DIVERGENCES, LossBenchSetup, check_divergences, resolved_chunk, run
    from kdlab.errors import KdlabError

    check_device(args.device)
    for flag, v in (("--vocab", args.vocab), ("--tokens", args.tokens), ("--batch-size", args.batch_size),
                    ("--chunk-tokens", args.chunk_tokens), ("--repeats", args.repeats)):
        if v is not None and v < 1:
            raise KdlabError(f"{flag} must be at least 1 (got {v})")
    names = [d.strip() for d in args.divergences.split(",") if d.strip()] if args.divergences else list(DIVERGENCES)
    check_divergences(names)
    s = LossBenchSetup(batch=args.batch_size or 4, tokens=args.tokens, vocab=args.vocab, chunk_tokens=args.chunk_tokens,
                       repeats=args.repeats or 3, device=args.device, divergences=names)
    mib = 2**20
    logits = s.batch * s.tokens * s.vocab * 4 / mib
    mem = "CUDA max_memory_allocated" if s.device != "cpu" else "peak RSS (VmHWM)"
    console.print(f"LM divergence, forward + backward: {s.batch} x {s.tokens} tokens, vocabulary {s.vocab} "
                  f"({logits:.0f} MiB of float32 logits per model), chunk {resolved_chunk(s)} tokens, "
                  f"{s.repeats} repeats, {s.device}, threads {__import__('os').environ.get('OMP_NUM_THREADS', '1')}; "
                  f"memory = {mem} above the logits")
    rows = run(s, log=console.print)
    table = [[r["divergence"], f"{r['naive_s'] * 1e3:.0f}", f"{r['chunked_s'] * 1e3:.0f}", f"{r['time_ratio']:.2f}",
              f"{r['naive_bytes'] / mib:.0f}", f"{r['chunked_bytes'] / mib:.0f}", f"{r['memory_ratio']:.2f}"]
             for r in rows]
    console.print(rich_table(["divergence", "naive ms", "chunked ms", "time ÷ naive", "naive extra MiB",
                              "chunked extra MiB", "memory ÷ naive"], table, title="chunked vs naive"))
    return 0


def cmd_bench_lm_cache(args) -> int:
    from kdlab.bench.lm_cache import LMCacheSetup, run

    s = LMCacheSetup(vocab=args.vocab if args.vocab != 32000 else 8192, batch_size=args.batch_size or 8,
                     steps=args.steps or 10, repeats=args.repeats or 3)
    console.print(f"LM teacher-logit cache: GPT-2 {s.teacher} -> {s.student}, vocabulary {s.vocab}, {s.batch_size} x "
                  f"{s.tokens} tokens per step, {s.steps} steps x {s.repeats} interleaved rounds, CPU threads "
                  f"{__import__('torch').get_num_threads()}", highlight=False)
    r = run(s, log=console.print)
    names = ("online_fkl", "topk_fkl", "sampled_fkl", "ce")
    rows = [[n, f"{r[n + '_cpu_ms']:.1f}", f"{r[n + '_wall_ms']:.1f}"] for n in names]
    console.print(rich_table(["step (fkl unless ce)", "median CPU ms", "median wall ms"], rows, title="step time"))
    ratios = ("topk_over_online", "sampled_over_online", "online_over_ce", "topk_over_ce", "sampled_over_ce")
    console.print(rich_table(["ratio (median of the rounds')", "CPU time", "wall time"],
                             [[k, f"{r[k]:.3f}", f"{r['wall_' + k]:.3f}"] for k in ratios], title=f"k = {s.k}"))
    sizes = [[x["mode"], str(x["k"]), f"{x['bytes']:,}", f"{x['tokens']:,}", f"{x['mib_per_million_tokens']:.1f}"]
             for x in r["sizes"]]
    console.print(rich_table(["cache", "k", "bytes", "tokens", "MiB per million tokens"], sizes, title="disk size"))
    return 0


def cmd_bench_loader(args) -> int:
    from kdlab.bench.loader_throughput import LoaderSetup, run
    from kdlab.errors import KdlabError

    check_device(args.device)
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        workers = [-1]
    if not workers or min(workers) < 0:
        raise KdlabError(f"--workers takes comma-separated counts of 0 or more (got {args.workers!r})")
    s = LoaderSetup(images=args.images, image=args.image_size, batch_size=args.batch_size or 64, workers=workers,
                    student=args.student or "resnet8", device=args.device, repeats=args.repeats or 2)
    console.print(f"loader: {s.images} PNG images {s.image}x{s.image}, batch {s.batch_size}, student {s.student}, "
                  f"{s.device}, CPU threads {__import__('torch').get_num_threads()}, median of {s.repeats} epochs")
    rows = run(s, log=lambda *a: None)
    table = [[r["loader"], f"{r['read_samples_s']:.0f}", f"{r['train_samples_s']:.0f}", f"{r['epoch_ratio']:.2f}"]
             for r in rows]
    console.print(rich_table(["loader", "read alone (samples/s)", "feeding the step (samples/s)",
                              "epoch ÷ in memory"], table, title="streamed vs in-memory data"))
    return 0
