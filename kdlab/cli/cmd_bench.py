"""`kdlab bench [step]`: speed benchmarks, reported as ratios measured in one run."""

from __future__ import annotations

from kdlab.cli.common import console
from kdlab.report.tables import rich_table


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: engine step overhead (step)")
    p.add_argument("what", nargs="?", default="step", choices=["step"])
    p.add_argument("--teacher", default="resnet32")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
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
