"""Figures: every plot the report writes and the notebooks draw inline, as `plot_*(ax, ...)` functions.

Each `plot_*` draws on axes it is given from data it is given (arrays, rows, dicts), so the report
(`report.py`, which reads the runs and writes PNG + SVG through `save`) and the notebooks (which show
the same figure inline) draw exactly the same thing. Nothing here reads a run folder or picks a backend:
`style` sets the house style (and the SVG hash salt that makes files byte-identical run to run), `save`
writes a figure's two files. A library module: it imports no stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import files
from .stats import legal_front

FIGURE_VARIANTS = ("sliding", "nonoverlap", "dynamic", "pre_eval_ttt+dynamic", "score_first_ttt", "dynamic_tail",
                   "dynamic_krause")
CHALLENGE_EVAL_SECONDS = 600  # the challenge caps evaluation at 10 minutes ...
CHALLENGE_GPUS = 8  # ... on 8×H100


def color(variant: str) -> str:
    """One colour per variant across every figure."""
    i = FIGURE_VARIANTS.index(variant) if variant in FIGURE_VARIANTS else len(FIGURE_VARIANTS)
    return f"C{i}"


def style() -> None:
    """The house style: small type, no top/right spines, and a fixed SVG hash salt (deterministic ids)."""
    import matplotlib

    matplotlib.rcParams.update({"svg.hashsalt": "dyneval", "figure.dpi": 100, "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False})


def legend(ax) -> None:
    """A legend where something is labelled (an empty panel, e.g. one seed's gap plot, gets none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def save(fig, out: Path, name: str) -> list[Path]:
    """`<out>/<name>.png` and `.svg`, each written atomically, without dates or software versions (byte-identical reruns); a pyplot
    figure is closed after (one made with `matplotlib.figure.Figure` has no window to close)."""
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path, metadata in zip(paths, ({"Software": None}, {"Date": None, "Creator": None})):
        with files.atomic_open(path) as fh:  # an interrupted save leaves no half-written figure
            fig.savefig(fh, format=path.suffix[1:], metadata=metadata)
    if fig.canvas.manager is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return paths


def _label(variant: str, legal: bool) -> str:
    return f"{variant}{'' if legal else ' (not legal)'}"


# ----------------------------------------------------------------------------------------------
# Along the validation stream

def plot_cumulative(ax, curves: dict, legal: dict, seed) -> None:
    """Cumulative bpb along the stream, one line per variant of one seed: `curves` maps a variant to
    (position after its last scored target, cumulative bpb) per window (`stats.cumulative_bpb`);
    not-legal variants dashed. A variant that adapts well bends below `sliding` as it reads on."""
    for v, (pos, cum) in curves.items():
        ax.plot(pos, cum, lw=1.1, ls="-" if legal[v] else "--", color=color(v), label=_label(v, legal[v]))
    ax.set_xlabel("position in the validation stream (tokens)")
    ax.set_ylabel("cumulative bits per byte")
    ax.set_title(f"Cumulative bpb over the stream (seed {seed})")
    legend(ax)


def plot_gap_to_sliding(ax, grid: np.ndarray, gaps: dict, legal: dict, num_seeds: int) -> None:
    """Each variant's cumulative bpb minus sliding's on sliding's positions `grid` (`gaps`: variant -> mean
    over seeds). The first 5% of the stream is cut: a running mean over a few windows is noise."""
    end = grid[-1] if len(gaps) else 1
    for v, g in gaps.items():
        ax.plot(grid, g, lw=1.1, ls="-" if legal[v] else "--", color=color(v), label=v)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlim(0.05 * end, end)
    ax.set_xlabel("position in the validation stream (tokens)")
    ax.set_ylabel("cumulative bpb minus sliding's")
    ax.set_title(f"Gap to sliding as the stream is scored (mean of {num_seeds} seed(s))")
    legend(ax)


def plot_chunk_delta(ax, deltas: dict, legal: dict, num_chunks: int, num_seeds: int) -> None:
    """Δbpb vs sliding per 1/`num_chunks` of the stream (`deltas`: variant -> mean over seeds of
    `stats.chunk_bpb` differences): where along the text adaptation gains or loses."""
    x = (np.arange(num_chunks) + 0.5) / num_chunks
    for v, d in deltas.items():
        ax.plot(x, d, marker="o", ms=3, lw=1.2, ls="-" if legal[v] else "--", color=color(v), label=_label(v, legal[v]))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("fraction of the validation stream")
    ax.set_ylabel("Δ bpb vs sliding (mean over seeds)")
    ax.set_title(f"Where adaptation gains: Δbpb per 1/{num_chunks} of the stream ({num_seeds} seed(s))")
    legend(ax)


def plot_document_gains(ax, gains: dict, min_bytes: float, num_seeds: int) -> None:
    """Per-document Δbpb vs sliding as one box (and its points) per variant: `gains` maps a variant to
    the Δ of every document of at least `min_bytes` bytes, all seeds together."""
    names = list(gains)
    data = [gains[v] for v in names]
    if data:
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(np.arange(1, len(names) + 1), labels=[n.replace("+", "+\n") for n in names], fontsize=7)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(d.size, i) + np.linspace(-0.15, 0.15, d.size), d, s=4, alpha=0.5, color=color(names[i - 1]))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("Δ bpb vs sliding, per document")
    ax.set_title(f"Per-document Δbpb vs sliding ({data[0].size if data else 0} scores: documents ≥ {min_bytes:.0f} "
                 f"bytes × {num_seeds} seed(s))")


# ----------------------------------------------------------------------------------------------
# Training

def plot_training_curves(a, b, metas: dict, published: dict | None = None) -> None:
    """Train loss on axes `a` and validation bpb on `b`, one line per seed's meta.json (`metas`).

    `published` (the published logs' `seeds`, only when every run is the record's:
    `published_run.published_curves`) is drawn beneath in grey, step for step: a reproduction of the run
    should lie on it.
    """
    if published:
        for i, (seed, log) in enumerate(published.items()):
            label = "published, 8×H100 (seeds " + ", ".join(published) + ")" if i == 0 else None
            a.plot([t["step"] for t in log["train"]], [t["train_loss"] for t in log["train"]], color="0.55",
                   lw=0.7, ls=":", label=label)
            b.plot([t["step"] for t in log["val"]], [t["val_bpb"] for t in log["val"]], color="0.55", lw=0.7,
                   ls=":", marker="s", ms=2.5, label=label)
    for seed, meta in metas.items():
        h = meta["history"]
        a.plot([t["step"] for t in h["train"]], [t["train_loss"] for t in h["train"]], lw=0.8, label=f"seed {seed}")
        b.plot([t["step"] for t in h["val"]], [t["val_bpb"] for t in h["val"]], marker="o", ms=3, label=f"seed {seed}")
    a.set_xlabel("step")
    a.set_ylabel("train loss (nats)")
    a.set_title("Training loss")
    b.set_xlabel("step")
    b.set_ylabel("val bpb (non-overlapping)")
    b.set_title("Validation bpb during training")
    if published:  # the first steps' losses (7-8 nats) would flatten the rest
        a.set_ylim(top=min(4.0, a.get_ylim()[1]))
        b.set_ylim(top=min(2.0, b.get_ylim()[1]))
    legend(a)
    legend(b)


def plot_schedules(axes, schedule: dict) -> None:
    """The optimizer's schedules over the steps of one run, one panel each (`axes`: three axes): the
    learning-rate scale (warm-up-free, linear warmdown), Muon's momentum warm-up, and late QAT's flag,
    set once the lr scale falls below the threshold. `schedule` is `schedules.training_schedule`'s."""
    steps = schedule["steps"]
    lr, mom, qat = axes
    lr.plot(steps, schedule["lr_scale"], color="C0", lw=1.2)
    if schedule["warmdown_start"] is not None:
        lr.axvline(schedule["warmdown_start"], color="0.5", ls=":", lw=0.8, label=f"warmdown from step {schedule['warmdown_start']:,}")
    lr.set_xlabel("step")
    lr.set_ylabel("lr scale (× each group's base lr)")
    lr.set_title("Learning rate")
    legend(lr)
    mom.plot(steps, schedule["muon_momentum"], color="C1", lw=1.2)
    mom.set_xlabel("step")
    mom.set_ylabel("Muon momentum")
    mom.set_title("Muon momentum warm-up")
    qat.step(steps, schedule["qat_flag"], where="post", color="C3", lw=1.2)
    if schedule["qat_step"] is not None:
        qat.axvline(schedule["qat_step"], color="0.5", ls=":", lw=0.8,
                    label=f"flag set at step {schedule['qat_step']:,} (lr scale < {schedule['qat_threshold']:g})")
    qat.set_ylim(-0.1, 1.1)
    qat.set_yticks([0, 1], labels=["off", "on"])
    qat.set_xlabel("step")
    qat.set_title("Late-QAT flag")
    legend(qat)


# ----------------------------------------------------------------------------------------------
# The eval-time frontier

def plot_eval_budget(ax, rows: list[dict], hardware: dict, seeds: int) -> str:
    """Every variant's Δ bpb vs sliding (mean ± std over seeds) against its evaluation seconds on `ax`:
    legal variants as circles, not-legal ones as red crosses, the legal Pareto front as a step line,
    and the challenge's 600 s cap (gid `challenge_cap`) only when `hardware` says the seconds are 8
    real GPUs' (`report.eval_hardware`). Returns the note the figure carries (why it has no cap line)."""
    for i, r in enumerate(sorted(rows, key=lambda r: r["eval_seconds_mean"])):
        legal = r["legal"]
        ax.errorbar(r["eval_seconds_mean"], r["delta_bpb_mean"], yerr=r["delta_bpb_std"], fmt="o" if legal else "X",
                    ms=5 if legal else 7, capsize=2, lw=0.8, color=color(r["variant"]) if legal else "tab:red",
                    mfc="white" if not legal else None)
        ax.annotate(r["variant"] + ("" if legal else " (not legal)"), (r["eval_seconds_mean"], r["delta_bpb_mean"]),
                    xytext=(4, 3 if i % 2 else -9), textcoords="offset points", fontsize=6.5, color="0.15" if legal else "tab:red")
    front = legal_front(rows)
    if front:
        xs = [r["eval_seconds_mean"] for r in front]
        ys = [r["delta_bpb_mean"] for r in front]
        right = max([r["eval_seconds_mean"] for r in rows] + ([CHALLENGE_EVAL_SECONDS] if hardware["cap"] else []))
        ax.step(xs + [right * 1.05], ys + ys[-1:], where="post", color="k", lw=1.0, alpha=0.6,
                label="legal Pareto front")
    ax.plot([], [], "o", color="0.4", label="legal")
    ax.plot([], [], "X", color="tab:red", mfc="white", label="not legal (trains on unscored tokens)")
    if hardware["cap"]:
        ax.axvline(CHALLENGE_EVAL_SECONDS, color="tab:red", ls=":", lw=1.2, gid="challenge_cap",
                   label=f"the challenge's cap: {CHALLENGE_EVAL_SECONDS} s on {CHALLENGE_GPUS} GPUs")
    ax.axhline(0, color="k", lw=0.6)
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_xscale("log")  # seconds span orders of magnitude (a non-overlapping pass to a TTT)
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter("{x:g}")
    ax.xaxis.set_minor_formatter(NullFormatter())
    seconds = [r["eval_seconds_mean"] for r in rows] + ([CHALLENGE_EVAL_SECONDS] if hardware["cap"] else [])
    if seconds:  # room on the right for the labels of the slowest variants
        ax.set_xlim(min(seconds) / 1.3, max(seconds) * 2.5)
    ax.set_xlabel(hardware["label"] + ", each variant alone (log scale)")
    ax.set_ylabel(f"Δ bpb vs sliding (mean ± std, {seeds} seed(s))")
    ax.set_title("What each second of evaluation buys")
    ax.legend(fontsize=7, loc="best")
    note = hardware["why_no_cap"]
    if note:
        ax.text(0.01, -0.2, note, transform=ax.transAxes, fontsize=7, color="0.3", va="top")
    return note


# ----------------------------------------------------------------------------------------------
# The sweep (sweep.py): rates tuned on the held-out tuning stream

# The sweep figure's own style since it was first drawn: the house style's type size and SVG salt, with all
# four spines (a heatmap is framed). Used as `matplotlib.rc_context(SWEEP_STYLE)` around drawing and saving.
SWEEP_STYLE = {"svg.hashsalt": "dyneval", "font.size": 9}


def plot_sweep(ax, grid: dict[str, list], deltas: list[tuple[dict, float]], choice: dict, title: str,
               note: str = "") -> None:
    """Tuning Δ bpb vs sliding of each setting of `grid` that scored (`deltas`: (setting, Δ) pairs in the
    grid's order; a diverged setting has none), the `choice` (one of them) marked: a line over a one-field
    grid (log x when its positive values span more than 20×), else a heatmap over the first two fields
    with the others held at the choice (`note` says so, under the axes) and a diverged cell written out."""
    fields = list(grid)
    if len(fields) == 1:
        _sweep_line(ax, fields[0], deltas, choice)
    else:
        _sweep_heatmap(ax, grid, deltas, choice)
        if note:
            ax.text(0, -0.18, note, transform=ax.transAxes, fontsize=7)
    ax.set_title(title, fontsize=8)


def _sweep_line(ax, field: str, deltas: list[tuple[dict, float]], choice: dict) -> None:
    values = [s[field] for s, _ in deltas]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
    xs = values if numeric else list(range(len(values)))
    at = values.index(choice[field])
    ax.plot(xs, [d for _, d in deltas], "o-", color="C0")
    ax.plot([xs[at]], [deltas[at][1]], "*", ms=14, color="C3", label="choice (lowest tuning bpb)")
    if numeric and all(x > 0 for x in xs) and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [str(x) for x in values])
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(field)
    ax.set_ylabel("Δ bpb vs sliding, tuning stream")
    ax.legend(fontsize=7)


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sweep_heatmap(ax, grid: dict[str, list], deltas: list[tuple[dict, float]], choice: dict) -> None:
    fields = list(grid)
    rows, cols = grid[fields[0]], grid[fields[1]]
    m = np.full((len(rows), len(cols)), np.nan)  # NaN: the setting diverged
    for s, d in deltas:
        if all(s[f] == choice[f] for f in fields[2:]):
            m[rows.index(s[fields[0]]), cols.index(s[fields[1]])] = d
    lim = max(abs(float(x)) for x in m.flatten() if x == x) if (m == m).any() else 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.figure.colorbar(im, ax=ax, label="Δ bpb vs sliding, tuning stream")
    ax.set_xticks(range(len(cols)), [_tick(c) for c in cols])
    ax.set_yticks(range(len(rows)), [_tick(r) for r in rows])
    ax.set_xlabel(fields[1])
    ax.set_ylabel(fields[0])
    for i in range(len(rows)):
        for j in range(len(cols)):
            dark = m[i, j] == m[i, j] and abs(m[i, j]) > 0.6 * lim
            ax.text(j, i, "diverged" if m[i, j] != m[i, j] else f"{m[i, j]:+.4f}", ha="center", va="center",
                    fontsize=7, color="w" if dark else "k")
    ax.plot(cols.index(choice[fields[1]]), rows.index(choice[fields[0]]), "s", ms=26, mfc="none", mec="C1", mew=2.5)
