"""Report: ablation tables across seeds, statistics, and the figures.

Owns reading a reproduction folder (`<runs>/seed<N>/` with `meta.json` and `eval/results.json`,
`eval/<variant>.npz`, `eval/doc_starts.npy`, or `FAILED.json`), the per-seed and aggregated tables
(mean ± std, paired Δ vs `sliding`, one-sided t-test, the challenge's 0.005-nat / p < 0.01 criterion,
eval seconds, artifact bytes) as Markdown and CSV, and the figures as PNG and SVG with deterministic
metadata: cumulative bpb over the stream, Δbpb per chunk, per-document gains, training curves.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from . import files
from .evaluate import load_stream

RECORD_DELTA_NATS = 0.005  # the challenge: a new record must beat the old by 0.005 nats ...
RECORD_P_VALUE = 0.01  # ... at p < 0.01
LN2 = math.log(2)


# ----------------------------------------------------------------------------------------------
# Reading runs

def load_runs(runs: str | Path) -> dict:
    """{seed: {"meta", "results", "dir"} or {"failed": reason}} for every seed folder under `runs`."""
    out = {}
    for d in sorted(Path(runs).glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0):
        if not d.name[4:].isdigit():
            continue
        seed = int(d.name[4:])
        failed = d / "FAILED.json"
        res = d / "eval" / "results.json"
        if failed.is_file():
            out[seed] = {"failed": json.loads(failed.read_text()).get("error", "failed"), "dir": d}
        elif res.is_file() and (d / "meta.json").is_file():
            out[seed] = {"meta": json.loads((d / "meta.json").read_text()), "results": json.loads(res.read_text()),
                         "dir": d}
        else:
            out[seed] = {"failed": "incomplete (no eval/results.json)", "dir": d}
    return out


def ok_runs(runs: dict) -> dict:
    return {s: r for s, r in runs.items() if "failed" not in r}


# ----------------------------------------------------------------------------------------------
# Statistics

def one_sided_p(deltas: np.ndarray) -> float:
    """p-value of a one-sided one-sample t-test, H1: mean(Δ) < 0 (nan with fewer than 2 seeds)."""
    from scipy import stats

    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.size < 2:
        return float("nan")
    if np.all(deltas == deltas[0]):
        return 0.0 if deltas[0] < 0 else 1.0
    return float(stats.ttest_1samp(deltas, 0.0, alternative="less").pvalue)


def aggregate(runs: dict) -> list[dict]:
    """One row per variant over the seeds that finished: mean ± std and paired deltas vs sliding."""
    good = ok_runs(runs)
    variants: list[str] = []
    for r in good.values():
        variants += [v for v in r["results"] if v not in variants]
    rows = []
    for v in variants:
        seeds = [s for s, r in good.items() if "bpb" in r["results"].get(v, {}) and "bpb" in r["results"].get("sliding", {})]
        if not seeds:
            continue
        for s in seeds:
            for key in ("bpb", "loss"):
                for name in (v, "sliding"):
                    if not math.isfinite(good[s]["results"][name].get(key, float("nan"))):
                        raise ValueError(f"seed {s}: {name} has a non-finite {key} in "
                                         f"{good[s]['dir'] / 'eval' / 'results.json'}: nothing to aggregate")
        bpb = np.array([good[s]["results"][v]["bpb"] for s in seeds])
        loss = np.array([good[s]["results"][v]["loss"] for s in seeds])
        d_bpb = bpb - np.array([good[s]["results"]["sliding"]["bpb"] for s in seeds])
        d_nats = loss - np.array([good[s]["results"]["sliding"]["loss"] for s in seeds])
        secs = np.array([good[s]["results"][v]["seconds"] for s in seeds])
        art = np.array([good[s]["meta"]["size"]["total_bytes"] for s in seeds])
        p = one_sided_p(d_nats) if v != "sliding" else float("nan")
        first = good[seeds[0]]["results"][v]
        rows.append({"variant": v, "seeds": len(seeds), "bpb_mean": bpb.mean(), "bpb_std": _std(bpb),
                     "delta_bpb_mean": d_bpb.mean(), "delta_bpb_std": _std(d_bpb), "delta_nats_mean": d_nats.mean(),
                     "p_value": p,
                     "meets_record_criterion": bool(v != "sliding" and d_nats.mean() <= -RECORD_DELTA_NATS
                                                    and p < RECORD_P_VALUE),
                     "eval_seconds_mean": secs.mean(), "artifact_bytes_mean": art.mean(),
                     "legal": bool(first.get("legal"))})
    return rows


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def per_seed_rows(runs: dict) -> list[dict]:
    rows = []
    for seed, r in runs.items():
        if "failed" in r:
            rows.append({"seed": seed, "variant": "(failed)", "bpb": float("nan"), "delta_bpb": float("nan"),
                         "seconds": float("nan"), "legal": "", "note": r["failed"][:200]})
            continue
        base = r["results"].get("sliding", {}).get("bpb", float("nan"))
        for v, e in r["results"].items():
            rows.append({"seed": seed, "variant": v, "bpb": e.get("bpb", float("nan")),
                         "delta_bpb": e.get("bpb", float("nan")) - base, "seconds": e.get("seconds", float("nan")),
                         "legal": e.get("legal"), "note": e.get("error", "")})
    return rows


# ----------------------------------------------------------------------------------------------
# Tables

def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def markdown(runs: dict, agg: list[dict], per_seed: list[dict]) -> str:
    good = ok_runs(runs)
    failed = {s: r["failed"] for s, r in runs.items() if "failed" in r}
    lines = [f"# Ablation: every variant on the same checkpoints ({len(good)} seed(s): "
             f"{', '.join(map(str, good)) or 'none'})", ""]
    if failed:
        lines += ["**Failed seeds** (excluded from the statistics):", ""]
        lines += [f"- seed {s}: {reason}" for s, reason in failed.items()] + [""]
    lines += ["| variant | legal | bpb (mean ± std) | Δ bpb vs sliding | Δ nats | p (one-sided) | "
              "record criterion | eval s | artifact bytes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in agg:
        lines.append(
            f"| {r['variant']} | {'yes' if r['legal'] else '**no**'} | {r['bpb_mean']:.4f} ± {r['bpb_std']:.4f} | "
            f"{r['delta_bpb_mean']:+.4f} ± {r['delta_bpb_std']:.4f} | {r['delta_nats_mean']:+.4f} | "
            f"{_p(r['p_value'])} | {_criterion(r)} | {r['eval_seconds_mean']:.1f} | "
            f"{r['artifact_bytes_mean']:,.0f} |")
    legal = [r for r in agg if r["legal"] and r["variant"] not in ("sliding", "nonoverlap")]
    if legal:
        best = min(legal, key=lambda r: r["bpb_mean"])
        sf = next((r for r in agg if r["variant"] == "score_first_ttt"), None)
        lines += ["", f"Best legal adaptation: **{best['variant']}**, Δ {best['delta_bpb_mean']:+.4f} bpb vs sliding"
                  + (f", {best['bpb_mean'] - sf['bpb_mean']:+.4f} vs score_first_ttt" if sf else "") + "."]
    lines += ["", "Record criterion: Δ ≤ −0.005 nats per token vs sliding and one-sided p < 0.01 over seeds. "
              "Variants marked **no** train on validation tokens before scoring them.", "",
              "## Per seed", "", "| seed | variant | bpb | Δ vs sliding | seconds | legal |", "|---|---|---|---|---|---|"]
    for r in per_seed:
        if r["variant"] == "(failed)":
            lines.append(f"| {r['seed']} | failed | {r['note']} | | | |")
        else:
            lines.append(f"| {r['seed']} | {r['variant']} | {r['bpb']:.4f} | {r['delta_bpb']:+.4f} | "
                         f"{r['seconds']:.1f} | {'yes' if r['legal'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _criterion(r: dict) -> str:
    if not r["meets_record_criterion"]:
        return "—"
    return "met" if r["legal"] else "met, but not legal"


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


# ----------------------------------------------------------------------------------------------
# Figures

FIGURE_VARIANTS = ("sliding", "nonoverlap", "dynamic", "pre_eval_ttt+dynamic", "score_first_ttt", "dynamic_tail",
                   "dynamic_krause")


def _color(variant: str) -> str:
    """One colour per variant across every figure."""
    i = FIGURE_VARIANTS.index(variant) if variant in FIGURE_VARIANTS else len(FIGURE_VARIANTS)
    return f"C{i}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "dyneval", "figure.dpi": 100, "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def ordered_stream(path: Path) -> dict:
    """A stream sorted by first scored target (rank slices interleave back into stream order)."""
    s = load_stream(path)
    order = np.argsort(s["first_scored"], kind="stable")
    return {k: v[order] for k, v in s.items()}


def _streams(run: dict) -> dict:
    ev = run["dir"] / "eval"
    return {v: ordered_stream(ev / f"{v}.npz") for v in run["results"] if (ev / f"{v}.npz").is_file()}


def chunk_bpb(stream: dict, edges: np.ndarray) -> np.ndarray:
    """bpb of each stream chunk [edges[i], edges[i+1]) of target positions (windows by first scored target)."""
    idx = np.clip(np.searchsorted(edges, stream["first_scored"], side="right") - 1, 0, len(edges) - 2)
    nats = np.bincount(idx, stream["nats"], minlength=len(edges) - 1)
    nbytes = np.bincount(idx, stream["bytes"], minlength=len(edges) - 1)
    return nats / LN2 / np.maximum(nbytes, 1e-9)


def figure_cumulative(runs: dict, out: Path) -> list[Path]:
    """Cumulative bpb along the stream per variant (first seed), and its gap to sliding (mean over seeds)."""
    plt = _plt()
    good = ok_runs(runs)
    seed, run = next(iter(good.items()))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    gaps: dict[str, list] = {}
    for s_, r in good.items():
        streams = _streams(r)
        if "sliding" not in streams:
            continue
        base = streams["sliding"]
        grid = base["first_scored"] + base["num_scored"]
        base_cum = np.cumsum(base["nats"]) / LN2 / np.cumsum(base["bytes"])
        for v, st in streams.items():
            if v not in FIGURE_VARIANTS:
                continue
            pos = st["first_scored"] + st["num_scored"]
            cum = np.cumsum(st["nats"]) / LN2 / np.maximum(np.cumsum(st["bytes"]), 1e-9)
            if s_ == seed:
                legal = r["results"][v]["legal"]
                a.plot(pos, cum, lw=1.1, ls="-" if legal else "--", color=_color(v),
                       label=f"{v}{'' if legal else ' (not legal)'}")
            if v != "sliding":
                gaps.setdefault(v, []).append(np.interp(grid, pos, cum) - base_cum)
    a.set_xlabel("position in the validation stream (tokens)")
    a.set_ylabel("cumulative bits per byte")
    a.set_title(f"Cumulative bpb over the stream (seed {seed})")
    a.legend(fontsize=7)
    end = grid[-1] if len(gaps) else 1
    for v, g in gaps.items():
        legal = run["results"][v]["legal"]
        b.plot(grid, np.mean(g, axis=0), lw=1.1, ls="-" if legal else "--", color=_color(v), label=v)
    b.axhline(0, color="k", lw=0.8)
    b.set_xlim(0.05 * end, end)  # the first windows' running mean is noise
    b.set_xlabel("position in the validation stream (tokens)")
    b.set_ylabel("cumulative bpb minus sliding's")
    b.set_title(f"Gap to sliding as the stream is scored (mean of {len(good)} seed(s))")
    b.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "cumulative_bpb")


def figure_chunk_delta(runs: dict, out: Path, num_chunks: int = 16) -> list[Path]:
    """Δbpb vs sliding per chunk of the stream, mean over seeds (where adaptation gains or loses)."""
    plt = _plt()
    good = ok_runs(runs)
    per_variant: dict[str, list[np.ndarray]] = {}
    for run in good.values():
        streams = _streams(run)
        if "sliding" not in streams:
            continue
        end = int((streams["sliding"]["first_scored"] + streams["sliding"]["num_scored"]).max())
        edges = np.linspace(0, end, num_chunks + 1)
        base = chunk_bpb(streams["sliding"], edges)
        for v, s in streams.items():
            if v in FIGURE_VARIANTS and v != "sliding":
                per_variant.setdefault(v, []).append(chunk_bpb(s, edges) - base)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = (np.arange(num_chunks) + 0.5) / num_chunks
    for v, ds in per_variant.items():
        legal = next(iter(good.values()))["results"][v]["legal"]
        ax.plot(x, np.mean(ds, axis=0), marker="o", ms=3, lw=1.2, ls="-" if legal else "--", color=_color(v),
                label=f"{v}{'' if legal else ' (not legal)'}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("fraction of the validation stream")
    ax.set_ylabel("Δ bpb vs sliding (mean over seeds)")
    ax.set_title(f"Where adaptation gains: Δbpb per 1/{num_chunks} of the stream ({len(good)} seed(s))")
    ax.legend(fontsize=7)
    return _save(fig, out, "delta_per_chunk")


def figure_documents(runs: dict, out: Path, min_bytes: float = 500.0) -> list[Path]:
    """Per-document Δbpb vs sliding, for the variants scored on sliding windows.

    Documents are split at BOS; a window's nats and bytes count toward the document of its first
    scored target (windows score `stride` targets, so this is exact up to one window per boundary).
    Non-overlapping variants are left out: their windows are L/S times coarser. Documents under
    `min_bytes` are dropped as too short to say anything.
    """
    plt = _plt()
    good = ok_runs(runs)
    gains: dict[str, list[np.ndarray]] = {}
    for run in good.values():
        doc_path = run["dir"] / "eval" / "doc_starts.npy"
        streams = _streams(run)
        if "sliding" not in streams or not doc_path.is_file():
            continue
        edges = np.append(np.load(doc_path), np.inf)
        base = chunk_bpb(streams["sliding"], edges)
        sl = streams["sliding"]
        idx = np.clip(np.searchsorted(edges, sl["first_scored"], side="right") - 1, 0, len(edges) - 2)
        big = np.bincount(idx, sl["bytes"], minlength=len(edges) - 1) >= min_bytes
        for v, s in streams.items():
            if v in FIGURE_VARIANTS and v not in ("sliding", "nonoverlap"):
                gains.setdefault(v, []).append((chunk_bpb(s, edges) - base)[big])
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(gains)
    data = [np.concatenate(gains[v]) for v in names]
    if data:
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(np.arange(1, len(names) + 1), labels=[n.replace("+", "+\n") for n in names], fontsize=7)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(d.size, i) + np.linspace(-0.15, 0.15, d.size), d, s=4, alpha=0.5, color=_color(names[i - 1]))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("Δ bpb vs sliding, per document")
    ax.set_title(f"Per-document Δbpb vs sliding ({data[0].size if data else 0} scores: documents ≥ {min_bytes:.0f} "
                 f"bytes × {len(good)} seed(s))")
    return _save(fig, out, "per_document_gain")


def figure_training(runs: dict, out: Path) -> list[Path]:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for seed, run in ok_runs(runs).items():
        h = run["meta"]["history"]
        a.plot([t["step"] for t in h["train"]], [t["train_loss"] for t in h["train"]], lw=0.8, label=f"seed {seed}")
        b.plot([t["step"] for t in h["val"]], [t["val_bpb"] for t in h["val"]], marker="o", ms=3, label=f"seed {seed}")
    a.set_xlabel("step")
    a.set_ylabel("train loss (nats)")
    a.set_title("Training loss")
    b.set_xlabel("step")
    b.set_ylabel("val bpb (non-overlapping)")
    b.set_title("Validation bpb during training")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "training_curves")


def build_report(runs_dir: str | Path, out_dir: str | Path) -> dict:
    """Write ablation tables and every figure for the seeds under `runs_dir` into `out_dir`."""
    runs = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"{runs_dir}: no seed folders: run `python -m dyneval reproduce` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg, per_seed = aggregate(runs), per_seed_rows(runs)
    for name, text in (("ablation.md", markdown(runs, agg, per_seed)), ("ablation.csv", _csv(agg)),
                       ("ablation_per_seed.csv", _csv(per_seed))):
        files.write_text(out / name, text)
    figures = []
    if ok_runs(runs):
        for f in (figure_cumulative, figure_chunk_delta, figure_documents, figure_training):
            figures += f(runs, out)
    return {"seeds": list(runs), "failed": [s for s, r in runs.items() if "failed" in r], "rows": agg,
            "figures": [str(p) for p in figures], "tables": [str(out / n) for n in
                                                              ("ablation.md", "ablation.csv", "ablation_per_seed.csv")]}


def main(args) -> int:
    r = build_report(args.runs, args.figures)
    print(f"report: {len(r['seeds'])} seed(s), {len(r['failed'])} failed -> {', '.join(r['tables'])}")
    for f in r["figures"]:
        print(f"  {f}")
    return 0
