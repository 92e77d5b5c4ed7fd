"""The `kdlab diagnose` report: one list of blocks (headings, text, tables, figures) rendered
both as Markdown (printed to the terminal, `report.md`) and as HTML (`report.html`, with its
PNG plots beside it), plus `results.json` with every number."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from kdlab.report.stats import fmt, mean_std
from kdlab.report.tables import markdown_table

SECTIONS = [
    "Accuracy ladder",
    "Attribution of the KD gain",
    "Class geometry",
    "Gradient rescaling (instance knowledge)",
    "Teacher diagnostics",
]
# How many standard errors a difference must clear to be called clear (not noise).
CLEAR_SE = 2.0


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of the per-seed differences a_i - b_i and its standard error (seeds pair the runs:
    the same seed gives the same initial student on every rung)."""
    d = [x - y for x, y in zip(a, b)]
    m, s = mean_std(d)
    return m, (s / math.sqrt(len(d)) if len(d) > 1 else float("nan"))


def pm(m: float, se: float, digits: int = 2) -> str:
    if se != se:
        return f"{m:+.{digits}f} ± –"
    return f"{m:+.{digits}f} ± {se:.{digits}f}"


def verdict(m: float, se: float) -> str:
    if se != se:
        return "one seed: no error estimate"
    if abs(m) > CLEAR_SE * se:
        return "clear" if m > 0 else "clearly negative"
    return "within noise"


# ------------------------------------------------------------------------ numbers
def analyse(res) -> dict:
    metric = res.metric
    acc = {r: [x[metric] for x in runs] for r, runs in res.rungs.items()}
    geo = {r: [x["geometry"] for x in runs] for r, runs in res.rungs.items()}
    out: dict = {"acc": acc, "geometry": geo}
    if all(k in acc for k in ("CE", "LS", "KD-pt", "KD")):
        out["attribution"] = {
            "total (KD − CE)": paired(acc["KD"], acc["CE"]),
            "universe (LS − CE)": paired(acc["LS"], acc["CE"]),
            "instance (KD-pt − LS)": paired(acc["KD-pt"], acc["LS"]),
            "domain (KD − KD-pt)": paired(acc["KD"], acc["KD-pt"]),
        }
    if all(k in acc for k in ("LS", "KD-sim", "KD-pt+sim", "KD")):
        out["cross_check"] = {
            "domain (KD-sim − LS)": paired(acc["KD-sim"], acc["LS"]),
            "instance (KD-pt+sim − KD-sim)": paired(acc["KD-pt+sim"], acc["KD-sim"]),
            "rest of the real teacher (KD − KD-pt+sim)": paired(acc["KD"], acc["KD-pt+sim"]),
        }
    rel = [r for r in ("KD", "KD-sim", "KD-pt+sim") if r in geo]
    flat = [r for r in ("CE", "LS") if r in geo]
    if rel and flat:
        n = len(res.seeds)
        rel_mean = [float(np.mean([geo[r][i] for r in rel])) for i in range(n)]
        flat_mean = [float(np.mean([geo[r][i] for r in flat])) for i in range(n)]
        out["geometry_gap"] = paired(rel_mean, flat_mean)
        out["geometry_min_rel_minus_max_flat"] = min(min(geo[r]) for r in rel) - max(max(geo[r]) for r in flat)
    if "KD" in res.rungs:
        rho = [x["w_q_spearman"] for x in res.rungs["KD"]]
        out["kd_w_spearman"] = mean_std(rho)
    return out


# -------------------------------------------------------------------------- plots
def _figure(w: float, h: float):
    # The object API with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_ladder(res, a: dict, path: Path) -> None:
    rungs = list(res.rungs)
    fig = _figure(11, 4)
    for ax, key, title in ((fig.add_subplot(1, 2, 1), "acc", f"test {res.metric}"),
                           (fig.add_subplot(1, 2, 2), "geometry", f"geometry score (vs {res.reference_name})")):
        vals = a[key]
        ms = [mean_std(vals[r]) for r in rungs]
        x = np.arange(len(rungs))
        ax.bar(x, [m for m, _ in ms], yerr=[s for _, s in ms], capsize=4, color="#8fb3d9", edgecolor="#2d5f8b")
        for i, r in enumerate(rungs):
            ax.scatter(np.full(len(vals[r]), i), vals[r], s=12, color="k", zorder=3)
        lo = min(min(v) for v in vals.values())
        hi = max(max(v) for v in vals.values())
        pad = max((hi - lo) * 0.3, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(x, rungs, rotation=20)
        ax.set_title(title + "\nmean ± std; dots: seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def plot_attribution(a: dict, path: Path) -> None:
    items = list(a.get("attribution", {}).items()) + list(a.get("cross_check", {}).items())
    fig = _figure(9, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(items))
    ax.barh(y, [m for _, (m, _) in items], xerr=[0 if s != s else s for _, (_, s) in items], capsize=4,
            color=["#4c72b0"] * len(a.get("attribution", {})) + ["#dd8452"] * len(a.get("cross_check", {})))
    ax.set_yticks(y, [k for k, _ in items])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("accuracy difference, points (mean of paired per-seed differences ± SE)")
    fig.tight_layout()
    fig.savefig(path)


def plot_heatmaps(res, path: Path) -> None:
    names = ["reference", "teacher", *res.rungs]
    order = res.class_order
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.2 * cols, 3.0 * rows)
    for i, n in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        m = res.similarity[n][np.ix_(order, order)]
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        label = res.reference_name if n == "reference" else n
        if n in res.rungs:
            label += f" (geometry {res.rungs[n][0]['geometry']:.2f})"
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.6)
    fig.savefig(path)


def plot_w(res, path: Path) -> None:
    shown = [r for r in ("KD", "KD-pt", "KD-pt+sim") if r in res.w_samples]
    fig = _figure(4.2 * (len(shown) + 1), 3.8)
    for i, r in enumerate(shown):
        ax = fig.add_subplot(1, len(shown) + 1, i + 1)
        w, q = res.w_samples[r]
        ax.scatter(q, w, s=4, alpha=0.35)
        bins = res.rungs[r][0]["w_bins"]
        ax.plot([b[0] for b in bins], [b[1] for b in bins], "o-", color="C3", label="quintile means")
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
        ax.set_xlabel("teacher confidence q_t")
        ax.set_ylabel("w (mean over training)")
        ax.set_title(f"{r} (seed {res.seeds[0]}): Spearman {res.rungs[r][0]['w_q_spearman']:.2f}", fontsize=9)
        ax.legend(fontsize=7)
    ax = fig.add_subplot(1, len(shown) + 1, len(shown) + 1)
    spread = [w for w, _ in res.w_samples.values() if len(w) and np.ptp(w) > 1e-4]
    # The central 98% of all w: a few examples the student fits before the teacher does have
    # large negative w and would squash the rest.
    lo, hi = (np.percentile(np.concatenate(spread), [1, 99]) if spread else (0.0, 1.0))
    for r, (w, _) in res.w_samples.items():
        if len(w) and np.ptp(w) > 1e-4:
            ax.hist(np.clip(w, lo, hi), bins=40, range=(lo, hi), histtype="step", label=r, density=True)
        elif len(w):
            ax.axvline(float(np.mean(w)), ls=":", label=f"{r} (w = {np.mean(w):.2f})", color="gray")
    ax.set_xlabel("w")
    ax.set_title("distribution of w by rung", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_teacher(res, path: Path) -> None:
    fig = _figure(5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(res.teacher.q_t, bins=40, color="#8c8c8c")
    ax.set_xlabel("teacher q_t on the training set (τ = 1)")
    ax.set_title(f"mean q_t {res.teacher.mean_q_t:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


# ------------------------------------------------------------------------- blocks
def _similarity_note(p: dict) -> str:
    """How KD-sim / KD-pt+sim got their class relationships (the temperature only matters for
    the cosine-similarity targets)."""
    if p.get("sim_source") == "class_mean_target":
        return "KD-sim / KD-pt+sim targets: the teacher's class-mean distributions"
    return f"class similarities from {p.get('sim_source', 'auto')} at temperature {p['sim_tau']:g}"


def _transfer_note(setup: dict) -> str:
    """Says so when the student learns from a transfer set smaller than the teacher's data."""
    n_t = setup.get("teacher_train_size", -1)
    if n_t is None or n_t < 0 or n_t == setup["train_size"]:
        return ""
    return (f"; the teacher was trained on {n_t}, so the student's {setup['train_size']} form a transfer set, on which "
            f"the teacher diagnostics and w are measured")


def build_blocks(res, a: dict) -> list[tuple]:
    p, s, t = res.params, res.setup, res.teacher
    metric = res.metric
    B: list[tuple] = [("h1", f"kdlab diagnose: {res.name}")]
    B.append(("p", f"Teacher {s['teacher']} ({s['teacher_params']:,} parameters, test {metric} "
                   f"{res.teacher_test.get('test_' + metric, float('nan')):.2f}) → student {s['student']} on "
                   f"'{s['data']}' ({s['num_classes']} classes, {s['train_size']} training examples{_transfer_note(s)}); "
                   f"{s['epochs']} epochs per student, seeds {res.seeds} (one teacher; the spread is over student seeds). "
                   f"λ = {p['lam']:g}, τ = {p['tau']:g}, {_similarity_note(p)}, "
                   f"LS ε = {p['ls_eps_used']:.3f}{' (matched to the teacher’s mean wrong-class mass)' if p['ls_eps'] is None else ''}. "
                   f"Report written in {res.elapsed_s:.0f} s."))
    # Ladder
    B.append(("h2", SECTIONS[0]))
    rows = []
    for r, runs in res.rungs.items():
        rows.append([r, RUNG_TEXT.get(r, ""), fmt(*mean_std(a["acc"][r])), fmt(*mean_std(a["geometry"][r]), digits=3),
                     fmt(*mean_std([x["w_mean"] for x in runs]), digits=3),
                     fmt(*mean_std([x["w_q_spearman"] for x in runs]), digits=2)])
    B.append(("table", ["rung", "knowledge it carries", f"test {metric}", "geometry score", "mean w", "Spearman(w, q_t)"], rows))
    B.append(("p", f"Mean ± sample std over {len(res.seeds)} seed(s). Every rung trains the same student with the same "
                   f"budget; KD-type rungs use (1−λ)·CE + λ·τ²·KL(target ‖ student)."))
    B.append(("img", "ladder.png", "accuracy and geometry score per rung"))
    # Attribution
    B.append(("h2", SECTIONS[1]))
    B.append(("p", "Attribution formula (A(x) = mean test accuracy of rung x, differences paired by seed): "
                   "total G = A(KD) − A(CE) = U + I + D with universe U = A(LS) − A(CE), instance "
                   "I = A(KD-pt) − A(LS), domain D = A(KD) − A(KD-pt). Cross-check along the synthetic path: "
                   "domain D' = A(KD-sim) − A(LS), instance I' = A(KD-pt+sim) − A(KD-sim). Uncertainty: standard "
                   f"error of the mean per-seed difference; 'clear' means more than {CLEAR_SE:g} standard errors from 0."))
    if "attribution" in a:
        rows = [[k, pm(*v), verdict(*v)] for k, v in a["attribution"].items()]
        rows += [[k + " (cross-check)", pm(*v), verdict(*v)] for k, v in a.get("cross_check", {}).items()]
        B.append(("table", ["level", f"gain in {metric} (points)", "verdict"], rows))
    B.append(("img", "attribution.png", "KD gain attributed to universe, instance and domain knowledge"))
    # Geometry
    B.append(("h2", SECTIONS[2]))
    B.append(("p", f"Class-similarity matrix of each student: cosine of its class weight vectors (`fc.weight` rows; "
                   f"class-mean logits when the head is not linear). Geometry score = Pearson correlation of the "
                   f"off-diagonal entries with the {res.reference_name} matrix (1 = same block structure, ≈0 = none)."
                   + (f" The teacher's own score: {t.geometry:.3f}." if t.geometry is not None else "")))
    if "geometry_gap" in a:
        m, se = a["geometry_gap"]
        gap_min = a["geometry_min_rel_minus_max_flat"]
        clear = verdict(m, se) == "clear" and gap_min > 0
        B.append(("p", f"Students taught class relationships (KD, KD-sim, KD-pt+sim) minus those that were not (CE, LS): "
                       f"{pm(m, se, 3)} (paired over seeds); lowest relational-student score minus highest CE/LS score: "
                       f"{gap_min:+.3f}. " + ("Clearly higher, as the theory predicts." if clear else
                                              ("Not clearly higher on this data/teacher: some CE/LS student reaches a similar geometry "
                                               "from the data alone, or the domain signal did not reach the students."))))
    B.append(("img", "heatmaps.png", "class-similarity matrices (first seed), classes ordered by superclass"))
    # w
    B.append(("h2", SECTIONS[3]))
    B.append(("p", "w = (true-logit gradient of the whole objective) / (that of plain CE), measured per example by a "
                   "gradient hook and averaged over training; for (1−λ)·CE + λ·KD at τ = 1 it equals "
                   "1 − λ(1 − q_t)/(1 − p_t). Examples the teacher finds hard (low q_t) get less weight."))
    if "KD" in res.rungs:
        rows = []
        bins_all = [x["w_bins"] for x in res.rungs["KD"]]
        nb = min(len(b) for b in bins_all)
        for j in range(nb):
            rows.append([f"{j + 1}", fmt(*mean_std([b[j][0] for b in bins_all]), digits=3),
                         fmt(*mean_std([b[j][1] for b in bins_all]), digits=3)])
        B.append(("table", ["q_t quintile (KD)", "mean q_t", "mean w"], rows))
        m, sd = a["kd_w_spearman"]
        falls = m > 0 and (m - 2 * sd > 0 if len(res.seeds) > 1 else True)
        B.append(("p", f"Spearman(w, q_t) for the KD student: {fmt(m, sd)} over seeds: "
                       + ("w falls as the teacher's confidence falls." if falls else "no consistent relation between w and q_t.")))
    B.append(("img", "w_vs_q.png", "w against teacher confidence q_t, and w's distribution per rung"))
    # Teacher
    B.append(("h2", SECTIONS[4]))
    B.append(("table", ["measure", "value"], [
        ["mean true-class confidence q_t (train, τ = 1)", f"{t.mean_q_t:.3f}"],
        ["wrong-class entropy −Σ_{j≠t} q_j log q_j (train, nats)", f"{t.wrong_entropy:.3f}"],
        ["wrong-class uniformity (1 = uniform)", f"{t.wrong_uniformity:.3f}"],
        [f"train {metric}", f"{t.train_top1:.2f}"],
        [f"expected calibration error ({t.ece_split}, 15 bins)", f"{t.ece:.3f}"],
        ["teacher geometry score", "–" if t.geometry is None else f"{t.geometry:.3f}"],
    ]))
    if t.warnings:
        for w in t.warnings:
            B.append(("warn", w))
    else:
        B.append(("p", "No warnings: the teacher is neither over-confident nor flat on the wrong classes."))
    B.append(("img", "teacher.png", "teacher confidence on the training set"))
    return B


RUNG_TEXT = {
    "CE": "labels only",
    "LS": "universe",
    "KD-pt": "universe + instance",
    "KD-sim": "universe + domain",
    "KD-pt+sim": "all three (synthetic)",
    "KD": "the real teacher",
}


def to_markdown(blocks) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "warn":
            out.append(f"> **Warning:** {b[1]}\n")
        elif kind == "table":
            out.append(markdown_table(b[1], [[str(c) for c in r] for r in b[2]]) + "\n")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n")
    return "\n".join(out)


def to_html(blocks, title: str) -> str:
    e = html.escape
    body = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            body.append(f"<h1>{e(b[1])}</h1>")
        elif kind == "h2":
            body.append(f"<h2>{e(b[1])}</h2>")
        elif kind == "p":
            body.append(f"<p>{e(b[1])}</p>")
        elif kind == "warn":
            body.append(f'<p class="warn"><b>Warning:</b> {e(b[1])}</p>')
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            body.append(f'<figure><img src="{e(b[1])}" alt="{e(b[2])}"><figcaption>{e(b[2])}</figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}.warn{background:#fff3cd;padding:.6em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def write_report(res, out_dir: str) -> str:
    """Write report.md, report.html, the PNGs and results.json; return the Markdown."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    a = analyse(res)
    plot_ladder(res, a, d / "ladder.png")
    plot_attribution(a, d / "attribution.png")
    plot_heatmaps(res, d / "heatmaps.png")
    plot_w(res, d / "w_vs_q.png")
    plot_teacher(res, d / "teacher.png")
    blocks = build_blocks(res, a)
    md = to_markdown(blocks) + f"\nReport: {d / 'report.html'}\n"
    (d / "report.md").write_text(md)
    (d / "report.html").write_text(to_html(blocks, f"kdlab diagnose: {res.name}"))
    results = {
        "name": res.name, "metric": res.metric, "params": res.params, "setup": res.setup, "seeds": res.seeds,
        "rungs": res.rungs, "teacher": res.teacher.numbers(), "teacher_test": res.teacher_test,
        "analysis": {k: v for k, v in a.items()}, "reference": res.reference_name,
        "similarity": res.similarity, "elapsed_s": res.elapsed_s,
    }  # fmt: skip
    (d / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    return md
