"""Report: the stage that turns a reproduction folder into ablation tables and figure files.

Owns reading a reproduction folder (`<runs>/seed<N>/` with `meta.json` and `eval/results.json`,
`eval/<variant>.npz`, `eval/doc_starts.npy`, or `FAILED.json`), deciding which seeds may be averaged
(`comparability`), the per-seed and aggregated tables as Markdown and CSV (the numbers come from
`stats`: mean ± std, paired Δ vs `sliding`, one-sided t-tests against 0 and against −0.005 nats, the
challenge's criterion), one run's `ablation.md/.csv` (written by the evaluate stage), and the figure
files: per figure, the data its `figures.plot_*` function draws (`*_data(runs)`, which notebook 05 calls
to draw the same figure inline) and the PNG + SVG written with deterministic metadata. The published
run (`published_run`) goes beside record-profile runs: its curves under the training curves, its
final numbers in the table.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from pathlib import Path

import numpy as np

from . import figures, files
from .evaluate import load_stream
from .figures import FIGURE_VARIANTS
from .runfolder import RunFolder
from .published_run import (NOT_COMPARABLE, flat, is_record_config, load_published, not_compared, published_markdown,
                            record_difference)
from .stats import aggregate, chunk_bpb, cumulative_bpb, ok_runs, per_seed_rows, scored_end


# ----------------------------------------------------------------------------------------------
# One run's tables (written by the evaluate stage after every variant)

def run_rows(results: dict) -> list[dict]:
    """One row per variant of one run's results.json (failed variants keep their error)."""
    base = results.get("sliding", {}).get("bpb")
    sf = results.get("score_first_ttt", {}).get("bpb")
    rows = []
    for name, r in results.items():
        if "bpb" not in r:
            rows.append({"variant": name, "bpb": float("nan"), "delta_vs_sliding": float("nan"),
                         "delta_vs_score_first_ttt": float("nan"), "seconds": float("nan"), "legal": r.get("legal"),
                         "error": r.get("error", "")})
            continue
        rows.append({"variant": name, "bpb": r["bpb"],
                     "delta_vs_sliding": r["bpb"] - base if base is not None else float("nan"),
                     "delta_vs_score_first_ttt": r["bpb"] - sf if sf is not None else float("nan"),
                     "seconds": r["seconds"], "legal": r["legal"], "error": ""})
    return rows


def write_run_tables(results: dict, out: Path) -> None:
    """One run's `ablation.md` / `.csv` beside its results.json: bpb and Δ vs sliding and vs score-first TTT."""
    rows = run_rows(results)
    lines = ["| variant | bpb | Δ vs sliding | Δ vs score_first_ttt | seconds | legal |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['variant']} | failed: {r['error'][:80]} | | | | {r['legal']} |")
            continue
        lines.append(f"| {r['variant']} | {r['bpb']:.4f} | {r['delta_vs_sliding']:+.4f} | "
                     f"{r['delta_vs_score_first_ttt']:+.4f} | {r['seconds']:.1f} | "
                     f"{'yes' if r['legal'] else 'NO (trains on unscored tokens)'} |")
    files.write_text(out / "ablation.md", "\n".join(lines) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["variant"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    files.write_text(out / "ablation.csv", buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Reading runs

def load_runs(runs: str | Path) -> dict:
    """{seed: {"meta", "results", "dir"} or {"failed": reason}} for every seed folder under `runs`."""
    out = {}
    for d in sorted(Path(runs).glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0):
        if not d.name[4:].isdigit():
            continue
        seed, run = int(d.name[4:]), RunFolder(d)
        if run.failed.is_file():
            out[seed] = {"failed": files.read_json(run.failed).get("error", "failed"), "dir": d}
        elif run.results.is_file() and run.meta.is_file():
            out[seed] = {"meta": read_meta(run.meta), "results": read_results(run.results), "dir": d}
        else:
            out[seed] = {"failed": "incomplete (no eval/results.json)", "dir": d}
    return out


def read_meta(path: Path) -> dict:
    """A run's meta.json with the fields the report reads (config, size, history) checked."""
    meta = files.read_json(path)
    need = {"config": dict, "size": dict, "history": dict}
    for key, kind in need.items():
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{path}: no {key!r} object (an incomplete or older meta.json): train the run again")
    if not isinstance(meta["size"].get("total_bytes"), (int, float)):
        raise ValueError(f"{path}: size.total_bytes is missing or not a number")
    for key in ("train", "val"):
        if not isinstance(meta["history"].get(key), list):
            raise ValueError(f"{path}: history.{key} is missing or not a list")
    return meta


def read_results(path: Path) -> dict:
    """An evaluation's results.json, every number a number (a string bpb would be averaged as text)."""
    results = files.read_json(path)
    for name, r in results.items():
        if not isinstance(r, dict):
            raise ValueError(f"{path}: {name} is not an object")
        for key in ("bpb", "loss", "seconds"):
            if key in r and (isinstance(r[key], bool) or not isinstance(r[key], (int, float))):
                raise ValueError(f"{path}: {name}.{key} is {r[key]!r}, not a number")
    return results


# ----------------------------------------------------------------------------------------------
# Which seeds may be aggregated

REPRODUCE_RECORD = "reproduce.json"  # written by `reproduce`: its profile, --set and --seed-set


def seed_set_fields(runs_dir: str | Path) -> dict[int, list[str]]:
    """The `--seed-set` overrides `reproduce` recorded for this folder: {seed: ["field=value", ...]}."""
    path = Path(runs_dir) / REPRODUCE_RECORD
    if not path.is_file():
        return {}
    return {int(k): list(v) for k, v in files.read_json(path).get("seed_overrides", {}).items()}


def _field(item: str) -> str:
    """`lr=1` or `train.seed=5` -> the full field name."""
    from .config import _locate, _split

    return ".".join(_locate(_split(item)[0]))


def _artifact_sha(run: dict) -> str | None:
    meta = run["meta"]
    return meta.get("export", {}).get("artifact_sha256") or meta.get("artifact_sha256")


def comparability(runs: dict, seed_sets: dict[int, list[str]] | None = None) -> list[str]:
    """Why the finished seeds may not be averaged, one sentence per seed; [] when they may.

    Seeds are comparable when each is its own run (its folder's seed is the seed it trained with, no two
    share an artifact), each scored the artifact its meta.json records, and all have the same config
    except `train.seed`, the per-seed step count of a step-count profile (`record_1gpu`: each seed's
    published count) and the fields set per seed with `--seed-set`; and every variant of any seed was
    scored on every seed (with the same eval settings).
    """
    from .config import published_iterations

    good = ok_runs(runs)
    per_seed = {s: {_field(o) for o in over} for s, over in (seed_sets or {}).items()}
    problems, artifacts = [], {}
    for seed, r in good.items():
        trained = r["meta"]["config"].get("train", {}).get("seed")
        if trained != seed:
            problems.append(f"seed {seed}: its run trained with train.seed={trained}, not {seed} "
                            f"(seeds come from --seeds, never --set train.seed)")
        sha = _artifact_sha(r)
        if sha and sha in artifacts:
            problems.append(f"seed {seed}: its artifact is seed {artifacts[sha]}'s (sha256 {sha[:12]}): the same "
                            f"run twice is not two seeds")
        artifacts.setdefault(sha, seed)
        scored = {e.get("artifact_sha256") for e in r["results"].values() if e.get("artifact_sha256")}
        if sha and scored - {sha}:
            problems.append(f"seed {seed}: {r['dir'] / 'eval' / 'results.json'} scores another artifact than its "
                            f"meta.json records (sha256 {sorted(scored - {sha})[0][:12]} vs {sha[:12]})")
    if len(good) < 2:
        return problems
    ref_seed, ref = next(iter(good.items()))
    ref_cfg = flat(ref["meta"]["config"])
    variants: list[str] = []
    for r in good.values():
        variants += [v for v in r["results"] if v not in variants]
    for seed, r in good.items():
        cfg = flat(r["meta"]["config"])
        free = {"train.seed"} | per_seed.get(seed, set()) | per_seed.get(ref_seed, set())
        if cfg.get("train.iterations") == published_iterations(seed) and \
                ref_cfg.get("train.iterations") == published_iterations(ref_seed):
            free.add("train.iterations")  # a step-count profile: each seed stops where its published run did
        diff = [k for k in sorted(set(cfg) | set(ref_cfg)) if k not in free and cfg.get(k) != ref_cfg.get(k)]
        if diff and seed != ref_seed:
            k = diff[0]
            problems.append(f"seed {seed}: its config differs from seed {ref_seed}'s ({k} {cfg.get(k)!r} vs "
                            f"{ref_cfg.get(k)!r}{f', and {len(diff) - 1} more' if len(diff) > 1 else ''})")
        missing = [v for v in variants if not math.isfinite(_number_or_nan(r["results"].get(v, {}).get("bpb")))]
        if missing:
            problems.append(f"seed {seed}: no score for {', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''} in {r['dir'] / 'eval' / 'results.json'} "
                            f"(an interrupted or failed evaluate: run it again to add the missing variants)")
            continue
        for v in variants:
            a, b = r["results"][v].get("eval_config"), ref["results"].get(v, {}).get("eval_config")
            if seed != ref_seed and a is not None and b is not None and a != b:
                k = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                problems.append(f"seed {seed}: {v} was scored with other eval settings than seed {ref_seed}'s "
                                f"(eval.{k} {a.get(k)!r} vs {b.get(k)!r})")
                break
    return problems


def _number_or_nan(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


def require_comparable(runs: dict, seed_sets: dict[int, list[str]] | None = None) -> None:
    """Refuse, in one line naming the seeds and the differences, to aggregate seeds that are not comparable."""
    problems = comparability(runs, seed_sets)
    if problems:
        raise ValueError("not aggregated: " + "; ".join(problems) + ". Averaging them would report one run as "
                         "several seeds or mix different runs: fix those seeds (or report them from separate folders)")


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


def markdown(runs: dict, agg: list[dict], per_seed: list[dict], seed_sets: dict | None = None) -> str:
    good = ok_runs(runs)
    failed = {s: r["failed"] for s, r in runs.items() if "failed" in r}
    lines = [f"# Ablation: every variant on the same checkpoints ({len(good)} seed(s): "
             f"{', '.join(map(str, good)) or 'none'})", ""]
    sets = {s: o for s, o in (seed_sets or {}).items() if s in runs and o}
    if sets:
        lines += ["Per-seed settings (`--seed-set`; otherwise every seed has the same config):", ""]
        lines += [f"- seed {s}: {', '.join(o)}" for s, o in sets.items()] + [""]
    if failed:
        lines += ["**Failed seeds** (excluded from the statistics):", ""]
        lines += [f"- seed {s}: {reason}" for s, reason in failed.items()] + [""]
    lines += ["| variant | legal | bpb (mean ± std) | Δ bpb vs sliding | Δ nats | p vs 0 | p vs −0.005 | "
              "record criterion | eval s | artifact bytes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in agg:
        lines.append(
            f"| {r['variant']} | {'yes' if r['legal'] else '**no**'} | {r['bpb_mean']:.4f} ± {r['bpb_std']:.4f} | "
            f"{r['delta_bpb_mean']:+.4f} ± {r['delta_bpb_std']:.4f} | {r['delta_nats_mean']:+.4f} | "
            f"{_p(r['p_value'])} | {_p(r['p_value_record'])} | {_criterion(r)} | {r['eval_seconds_mean']:.1f} | "
            f"{r['artifact_bytes_mean']:,.0f} |")
    legal = [r for r in agg if r["legal"] and r["variant"] not in ("sliding", "nonoverlap")]
    if legal:
        best = min(legal, key=lambda r: r["bpb_mean"])
        sf = next((r for r in agg if r["variant"] == "score_first_ttt"), None)
        lines += ["", f"Best legal adaptation: **{best['variant']}**, Δ {best['delta_bpb_mean']:+.4f} bpb vs sliding"
                  + (f", {best['bpb_mean'] - sf['bpb_mean']:+.4f} vs score_first_ttt" if sf else "") + "."]
    lines += ["", "Record criterion (the challenge's): mean Δ < −0.005 nats per token vs sliding at p < 0.01, "
              "a one-sided t-test over seeds of H0: mean Δ ≥ −0.005 (column p vs −0.005); p vs 0 only says "
              "whether a variant helps at all. "
              "Variants marked **no** train on validation tokens before scoring them.", "",
              "## The published run", "", *published_section(good), "",
              "## Per seed", "", "| seed | variant | bpb | Δ vs sliding | seconds | legal |", "|---|---|---|---|---|---|"]
    for r in per_seed:
        if r["variant"] == "(failed)":
            lines.append(f"| {r['seed']} | failed | {r['note']} | | | |")
        else:
            lines.append(f"| {r['seed']} | {r['variant']} | {r['bpb']:.4f} | {r['delta_bpb']:+.4f} | "
                         f"{r['seconds']:.1f} | {'yes' if r['legal'] else 'no'} |")
    return "\n".join(lines) + "\n"


def published_section(good: dict) -> list[str]:
    """Per seed, the published numbers beside the reproduced ones (record profiles only)."""
    lines = []
    for seed, r in good.items():
        if is_record_config(r["meta"].get("config", {})):
            lines += published_markdown(r["meta"], r["results"]).splitlines() + [""]
    return lines or [NOT_COMPARABLE]  # record-model runs that are not the record say why, one sentence each


def _criterion(r: dict) -> str:
    if not r["meets_record_criterion"]:
        return "—"
    return "met" if r["legal"] else "met, but not legal"


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


# ----------------------------------------------------------------------------------------------
# Figures: the data each `figures.plot_*` draws, and the files

def _figure(figsize: tuple[float, float]):
    """A figure outside pyplot (no backend chosen, none switched: a notebook's inline plots stay inline)."""
    from matplotlib.figure import Figure

    figures.style()
    return Figure(figsize=figsize)


def ordered_stream(path: Path) -> dict:
    """A stream sorted by first scored target (rank slices interleave back into stream order)."""
    try:
        s = load_stream(path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable stream ({type(e).__name__}: {str(e)[:80]}): a truncated file; "
                         f"run evaluate on that run again with --fresh") from None
    order = np.argsort(s["first_scored"], kind="stable")
    return {k: v[order] for k, v in s.items()}


def eval_streams(eval_dir: Path, results: dict) -> dict:
    """{variant: its ordered stream} for every variant of `results` whose `<variant>.npz` is in `eval_dir`."""
    return {v: ordered_stream(eval_dir / f"{v}.npz") for v in results if (eval_dir / f"{v}.npz").is_file()}


def _streams(run: dict) -> dict:
    return eval_streams(RunFolder(run["dir"]).eval_dir, run["results"])


def _legal(run: dict) -> dict:
    return {v: bool(r.get("legal")) for v, r in run["results"].items()}


def cumulative_data(runs: dict) -> dict:
    """What `figures.plot_cumulative` and `plot_gap_to_sliding` draw: the first seed's cumulative bpb per
    figure variant, and each variant's cumulative bpb minus sliding's on sliding's positions, mean over seeds."""
    good = ok_runs(runs)
    seed, run = next(iter(good.items()))
    curves, gaps, grid = {}, {}, None
    for s_, r in good.items():
        streams = _streams(r)
        if "sliding" not in streams:
            continue
        grid = scored_end(streams["sliding"])
        base_cum = cumulative_bpb(streams["sliding"])
        for v, st in streams.items():
            if v not in FIGURE_VARIANTS:
                continue
            pos, cum = scored_end(st), cumulative_bpb(st)
            if s_ == seed:
                curves[v] = (pos, cum)
            if v != "sliding":
                gaps.setdefault(v, []).append(np.interp(grid, pos, cum) - base_cum)
    return {"curves": curves, "legal": _legal(run), "seed": seed, "grid": grid,
            "gaps": {v: np.mean(g, axis=0) for v, g in gaps.items()}, "num_seeds": len(good)}


def figure_cumulative(runs: dict, out: Path) -> list[Path]:
    """Cumulative bpb along the stream per variant (first seed), and its gap to sliding (mean over seeds)."""
    d = cumulative_data(runs)
    fig = _figure((11, 4))
    a, b = fig.subplots(1, 2)
    figures.plot_cumulative(a, d["curves"], d["legal"], d["seed"])
    figures.plot_gap_to_sliding(b, d["grid"], d["gaps"], d["legal"], d["num_seeds"])
    fig.tight_layout()
    return figures.save(fig, out, "cumulative_bpb")


def chunk_delta_data(runs: dict, num_chunks: int = 16) -> dict:
    """What `figures.plot_chunk_delta` draws: Δbpb vs sliding per 1/`num_chunks` of the stream, mean over seeds."""
    good = ok_runs(runs)
    per_variant: dict[str, list[np.ndarray]] = {}
    for run in good.values():
        streams = _streams(run)
        if "sliding" not in streams:
            continue
        end = int(scored_end(streams["sliding"]).max())
        edges = np.linspace(0, end, num_chunks + 1)
        base = chunk_bpb(streams["sliding"], edges)
        for v, s in streams.items():
            if v in FIGURE_VARIANTS and v != "sliding":
                per_variant.setdefault(v, []).append(chunk_bpb(s, edges) - base)
    return {"deltas": {v: np.mean(ds, axis=0) for v, ds in per_variant.items()},
            "legal": _legal(next(iter(good.values()))), "num_chunks": num_chunks, "num_seeds": len(good)}


def figure_chunk_delta(runs: dict, out: Path, num_chunks: int = 16) -> list[Path]:
    """Δbpb vs sliding per chunk of the stream, mean over seeds (where adaptation gains or loses)."""
    fig = _figure((7, 4))
    ax = fig.subplots()
    figures.plot_chunk_delta(ax, **chunk_delta_data(runs, num_chunks))
    return figures.save(fig, out, "delta_per_chunk")


def document_gain_data(runs: dict, min_bytes: float = 500.0) -> dict:
    """What `figures.plot_document_gains` draws: per-document Δbpb vs sliding, for the variants scored on
    sliding windows, every seed's documents together.

    Documents are split at BOS; a window's nats and bytes count toward the document of its first
    scored target (windows score `stride` targets, so this is exact up to one window per boundary).
    Non-overlapping variants are left out: their windows are L/S times coarser. Documents under
    `min_bytes` are dropped as too short to say anything.
    """
    good = ok_runs(runs)
    gains: dict[str, list[np.ndarray]] = {}
    for run in good.values():
        doc_path = RunFolder(run["dir"]).eval_dir / "doc_starts.npy"
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
    return {"gains": {v: np.concatenate(g) for v, g in gains.items()}, "min_bytes": min_bytes,
            "num_seeds": len(good)}


def figure_documents(runs: dict, out: Path, min_bytes: float = 500.0) -> list[Path]:
    """Per-document Δbpb vs sliding (`document_gain_data`)."""
    fig = _figure((7, 4))
    ax = fig.subplots()
    figures.plot_document_gains(ax, **document_gain_data(runs, min_bytes))
    return figures.save(fig, out, "per_document_gain")


def published_curves(metas: dict) -> tuple[dict | None, str]:
    """The published curves to draw beneath the runs' (`figures.plot_training_curves`), and the sentence
    saying what was drawn: only when every run is the record's (`record_difference`), else None and why."""
    shown = bool(metas) and all(record_difference(m) is None for m in metas.values())
    if shown:
        return load_published()["seeds"], ("The run's published curves (grey, dotted) are drawn beneath: a "
                                           "reproduction should lie on them.")
    return None, not_compared(next(iter(metas.values()))) if metas else NOT_COMPARABLE


def training_data(runs: dict) -> dict:
    """What `figures.plot_training_curves` draws: every finished seed's meta.json, and the published curves
    when they compare."""
    metas = {seed: run["meta"] for seed, run in ok_runs(runs).items()}
    return {"metas": metas, "published": published_curves(metas)[0]}


def figure_training(runs: dict, out: Path) -> list[Path]:
    fig = _figure((9, 3.6))
    a, b = fig.subplots(1, 2)
    figures.plot_training_curves(a, b, **training_data(runs))
    fig.tight_layout()
    return figures.save(fig, out, "training_curves")


def eval_hardware(runs: dict) -> dict:
    """Where the evaluation seconds of the finished seeds were measured, from their results.json.

    Per variant each entry records the device (`backends.device`: "cpu" or the GPU's name), the real
    processes (`world_size`), the ranks emulated on them (`settings.virtual_ranks`) and the CPU threads.
    The challenge's 600 s cap applies to seconds measured on 8 real GPUs only: emulated ranks run one
    after another on fewer GPUs, and CPU seconds measure another machine altogether. Returns the axis
    label, whether to draw the cap, and the sentence saying why when it is not drawn.
    """
    cap_s, gpus = figures.CHALLENGE_EVAL_SECONDS, figures.CHALLENGE_GPUS
    seen = set()
    for run in ok_runs(runs).values():
        for r in run["results"].values():
            if "seconds" not in r:
                continue
            dev = r.get("backends", {}).get("device") or r.get("device")
            virtual = r.get("settings", {}).get("virtual_ranks", 0) if r.get("rank_local") else 0
            seen.add((dev, r.get("world_size"), virtual or 0, r.get("cpu_threads")))
    if not seen or any(d is None or w is None for d, w, _, _ in seen):
        return {"label": "evaluation seconds (hardware not recorded)", "cap": False,
                "why_no_cap": "No 600 s cap line: the results do not record the hardware their seconds come from."}
    devices = sorted({d for d, _, _, _ in seen})
    worlds = sorted({w for _, w, _, _ in seen})
    virtual = sorted({v for _, _, v, _ in seen if v})
    if devices == ["cpu"]:
        threads = sorted({t for *_, t in seen if t})
        label = (f"evaluation seconds on the CPU ({'/'.join(map(str, threads)) or '?'} threads, "
                 f"{'/'.join(map(str, worlds))} process{'es' if worlds != [1] else ''})")
        return {"label": label, "cap": False,
                "why_no_cap": f"No {cap_s} s cap line: these are CPU seconds; the challenge's cap is "
                              f"{cap_s} s on {gpus}×H100."}
    label = f"evaluation seconds on {' / '.join(f'{w}× {d}' for w in worlds for d in devices)}"
    if virtual:
        label += f", {'/'.join(map(str, virtual))} ranks emulated"
    cap = worlds == [gpus] and not virtual and "cpu" not in devices
    why = "" if cap else (
        f"No {cap_s} s cap line: "
        + (f"{'/'.join(map(str, virtual))} ranks emulated on {'/'.join(map(str, worlds))} real GPU(s) run one after "
           f"another, so these are not {gpus}-GPU seconds." if virtual else
           f"seconds on {'/'.join(map(str, worlds))} GPU(s), not {gpus} real GPUs."))
    return {"label": label, "cap": cap, "why_no_cap": why}


def eval_budget_data(runs: dict) -> dict:
    """What `figures.plot_eval_budget` draws: the aggregated rows with seconds, where they were measured,
    and the number of seeds."""
    return {"rows": [r for r in aggregate(runs) if math.isfinite(r["eval_seconds_mean"])],
            "hardware": eval_hardware(runs), "seeds": len(ok_runs(runs))}


def figure_eval_budget(runs: dict, out: Path) -> list[Path]:
    """`eval_budget.png/.svg`: the eval-time frontier of the aggregated table (`figures.plot_eval_budget`)."""
    fig = _figure((7.5, 4.8))
    ax = fig.subplots()
    figures.plot_eval_budget(ax, **eval_budget_data(runs))
    fig.tight_layout()
    return figures.save(fig, out, "eval_budget")


def build_report(runs_dir: str | Path, out_dir: str | Path) -> dict:
    """Write ablation tables and every figure for the seeds under `runs_dir` into `out_dir`."""
    runs = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"{runs_dir}: no seed folders: run `python -m dyneval reproduce` first")
    seed_sets = seed_set_fields(runs_dir)
    require_comparable(runs, seed_sets)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg, per_seed = aggregate(runs), per_seed_rows(runs)
    for name, text in (("ablation.md", markdown(runs, agg, per_seed, seed_sets)), ("ablation.csv", _csv(agg)),
                       ("ablation_per_seed.csv", _csv(per_seed))):
        files.write_text(out / name, text)
    written = []
    if ok_runs(runs):
        for f in (figure_cumulative, figure_chunk_delta, figure_documents, figure_training, figure_eval_budget):
            written += f(runs, out)
    return {"seeds": list(runs), "failed": [s for s, r in runs.items() if "failed" in r], "rows": agg,
            "figures": [str(p) for p in written], "tables": [str(out / n) for n in
                                                              ("ablation.md", "ablation.csv", "ablation_per_seed.csv")]}
