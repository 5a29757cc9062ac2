"""Report: ablation tables across seeds, statistics, and the figures.

Owns reading a reproduction folder (`<runs>/seed<N>/` with `meta.json` and `eval/results.json`,
`eval/<variant>.npz`, `eval/doc_starts.npy`, or `FAILED.json`), the per-seed and aggregated tables
(mean ± std, paired Δ vs `sliding`, one-sided t-tests against 0 and against −0.005 nats, the
challenge's criterion mean Δ < −0.005 nats at p < 0.01, eval seconds, artifact bytes) as Markdown and
CSV, and the figures as PNG and SVG with deterministic metadata: cumulative bpb over the stream, Δbpb
per chunk, per-document gains, training curves. For record profiles, the run's published logs (package
data, `dyneval/published/run397_logs.json`) go beside the reproduction: curves under the training
curves, final numbers beside the reproduced ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from . import files
from .evaluate import load_stream

RECORD_DELTA_NATS = 0.005  # the challenge: a new record must beat the old by 0.005 nats ...
RECORD_P_VALUE = 0.01  # ... at p < 0.01
LN2 = math.log(2)


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
        seed = int(d.name[4:])
        failed = d / "FAILED.json"
        res = d / "eval" / "results.json"
        if failed.is_file():
            out[seed] = {"failed": files.read_json(failed).get("error", "failed"), "dir": d}
        elif res.is_file() and (d / "meta.json").is_file():
            out[seed] = {"meta": read_meta(d / "meta.json"), "results": read_results(res), "dir": d}
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


def ok_runs(runs: dict) -> dict:
    return {s: r for s, r in runs.items() if "failed" not in r}


# ----------------------------------------------------------------------------------------------
# Which seeds may be aggregated

REPRODUCE_RECORD = "reproduce.json"  # written by `reproduce`: its profile, --set and --seed-set


def seed_set_fields(runs_dir: str | Path) -> dict[int, list[str]]:
    """The `--seed-set` overrides `reproduce` recorded for this folder: {seed: ["field=value", ...]}."""
    path = Path(runs_dir) / REPRODUCE_RECORD
    if not path.is_file():
        return {}
    return {int(k): list(v) for k, v in files.read_json(path).get("seed_overrides", {}).items()}


def _flat(config: dict) -> dict:
    return {f"{s}.{k}" if isinstance(sec, dict) else s: v for s, sec in config.items()
            for k, v in (sec.items() if isinstance(sec, dict) else [(None, sec)])}


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
    ref_cfg = _flat(ref["meta"]["config"])
    variants: list[str] = []
    for r in good.values():
        variants += [v for v in r["results"] if v not in variants]
    for seed, r in good.items():
        cfg = _flat(r["meta"]["config"])
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
# The published run beside a reproduction

PUBLISHED_LOGS = Path(__file__).resolve().parent / "published" / "run397_logs.json"
NOT_COMPARABLE = ("The run's published logs are shown only beside record-profile runs (record, record_1gpu): "
                  "this run trains another model or batch (e.g. the smoke profile), so they would not compare.")


def load_published() -> dict:
    """What the run's three published training logs printed (seeds 42, 7, 2024), with their `source`.

    A copy of the shared reference's `published/run397_logs.json` shipped as package data: per seed the
    train loss every 200 steps, the val loss/bpb every 1,000, the late-QAT and stop steps, the bytes,
    and the final lines (`final_int6_roundtrip_exact` is scored after the pre-eval TTT).
    """
    return json.loads(PUBLISHED_LOGS.read_text())


def is_record_config(config: dict) -> bool:
    """Whether a resolved config trains the run's model on the run's batch, so that its step-indexed
    curves and final numbers compare with the published logs (the record and record_1gpu profiles)."""
    from .config import preset

    record = preset("record").to_dict()
    train = config.get("train", {})
    return config.get("model") == record["model"] and all(
        train.get(k) == record["train"][k] for k in ("train_batch_tokens", "train_seq_len"))


RECORD_DATA = ("fineweb10B_sp1024", "fineweb_1024_bpe.model")  # the challenge's export: dataset folder, tokenizer
# The sha256 of the challenge's fineweb_1024_bpe.model is not shipped with the bundle (the published logs do not
# print it): a run qualifies by the export's names and by recording the hash it checked (data.check_tokenizer);
# set this to the Hub file's hash to check the bytes too.
RECORD_TOKENIZER_SHA256: str | None = None
RECORD_SCHEDULE = ("train.warmdown_iters", "train.late_qat_threshold", "train.qat_trains", "train.grad_accum_total")


def record_difference(meta: dict) -> str | None:
    """What keeps a run from being the record's, in a few words; None when its numbers compare with the
    published ones: the record's model, batch, data (the challenge's export, by tokenizer hash), schedule
    (optimizer, warmdown, late QAT), EMA, and a step count within the published runs' range."""
    from .config import preset

    config = meta.get("config", {})
    if not is_record_config(config):
        return "its model or batch is not the record's"
    record, cfg = _flat(preset("record").to_dict()), _flat(config)
    data, tok = Path(cfg.get("train.data_path", "")).name, Path(cfg.get("train.tokenizer_path", "")).name
    sha = meta.get("tokenizer_sha256")
    if (data, tok) != RECORD_DATA or not sha or (RECORD_TOKENIZER_SHA256 and sha != RECORD_TOKENIZER_SHA256):
        return (f"its data is not the challenge's FineWeb export (dataset {data}, tokenizer {tok}, "
                f"sha256 {(sha or 'not recorded')[:12]})")
    for k in [k for k in record if k.startswith("optim.")] + list(RECORD_SCHEDULE):
        if cfg.get(k) != record[k]:
            return f"its schedule differs ({k} {cfg.get(k)!r}, the record's {record[k]!r})"
    if cfg.get("train.ema_decay") != record["train.ema_decay"]:
        return f"its EMA differs (train.ema_decay {cfg.get('train.ema_decay')!r}, the record's {record['train.ema_decay']!r})"
    stops = [log["stop_step"] for log in load_published()["seeds"].values()]
    steps = meta.get("steps")
    if not isinstance(steps, int) or not min(stops) <= steps <= max(stops):
        return f"it trained {steps} steps, outside the published runs' {min(stops):,}-{max(stops):,}"
    return None


def published_comparison(meta: dict, results: dict | None = None) -> list[dict]:
    """The published numbers beside a reproduced run's (meta.json, eval/results.json); [] unless the run
    is the record's (`record_difference`). A published seed is compared with itself; any other with the
    published mean."""
    if record_difference(meta) is not None:
        return []
    seeds = load_published()["seeds"]
    seed = str(meta["config"]["train"]["seed"])
    logs = [seeds[seed]] if seed in seeds else list(seeds.values())
    against = f"seed {seed}" if seed in seeds else "mean of seeds " + ", ".join(seeds)
    results = results or {}

    def published(get):
        return float(np.mean([get(log) for log in logs]))

    size, val = meta.get("size", {}), meta.get("history", {}).get("val", [])
    rows = [("training steps", published(lambda g: g["stop_step"]), meta.get("steps")),
            ("val bpb at the last step, before EMA (non-overlapping)", published(lambda g: g["val"][-1]["val_bpb"]),
             val[-1]["val_bpb"] if val else None),
            ("int6 + zstd model bytes", published(lambda g: g["int6_zstd_model_bytes"]), size.get("model_bytes")),
            ("code bytes (the run: its one script; here: dyneval/*.py)", published(lambda g: g["code_bytes"]),
             size.get("code_bytes")),
            ("non-overlapping bpb after pre-eval TTT (the run's final_int6_roundtrip)",
             published(lambda g: g["final"]["final_int6_roundtrip_exact"]["val_bpb"]),
             results.get("pre_eval_ttt+nonoverlap", {}).get("bpb")),
            ("pre-eval TTT + dynamic eval bpb (the run's headline, final_dyneval)",
             published(lambda g: g["final"]["final_dyneval_exact"]["val_bpb"]),
             results.get("pre_eval_ttt+dynamic", {}).get("bpb"))]
    whole = {"training steps", "int6 + zstd model bytes", "code bytes (the run: its one script; here: dyneval/*.py)"}
    return [{"quantity": q, "published": pub, "reproduced": rep, "published_as": against, "whole": q in whole}
            for q, pub, rep in rows]


def published_markdown(meta: dict, results: dict | None = None) -> str:
    """A Markdown table of `published_comparison`, or the sentence saying why there is none."""
    rows = published_comparison(meta, results)
    if not rows:
        return not_compared(meta) + "\n"
    seed = meta["config"]["train"]["seed"]
    lines = [f"The published run ({rows[0]['published_as']}, 8×H100) beside this run (seed {seed}):", "",
             "| quantity | published | reproduced | difference |", "|---|---|---|---|"]
    for r in rows:
        pub, rep = r["published"], r["reproduced"]
        whole = r.get("whole", False)  # counts (steps, bytes): a mean over seeds is still printed whole
        diff = "" if rep is None else _number(rep - pub, signed=True, whole=whole)
        lines.append(f"| {r['quantity']} | {_number(pub, whole=whole)} | "
                     f"{'—' if rep is None else _number(rep, whole=whole)} | {diff} |")
    return "\n".join(lines) + "\n"


def not_compared(meta: dict) -> str:
    """Why a run is not shown beside the published one, in one sentence."""
    why = record_difference(meta)
    if why == "its model or batch is not the record's":
        return NOT_COMPARABLE
    return (f"Not compared with the published run: {why}, so its numbers would not compare with the published "
            f"ones (seed {meta.get('config', {}).get('train', {}).get('seed')}).")


def _number(x: float, signed: bool = False, whole: bool = False) -> str:
    if whole or (float(x).is_integer() and abs(x) >= 100):
        x = round(x)
        return f"{x:+,.0f}" if signed else f"{x:,.0f}"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


# ----------------------------------------------------------------------------------------------
# Statistics

def one_sided_p(deltas: np.ndarray, bound: float = 0.0) -> float:
    """p-value of a one-sided one-sample t-test, H0: mean(Δ) ≥ bound, H1: mean(Δ) < bound.

    `bound=0` asks "does it help at all"; the challenge's record criterion asks for `bound=-0.005`
    nats (H1: the improvement exceeds 0.005 nats). nan with fewer than 2 seeds.
    """
    from scipy import stats

    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.size < 2:
        return float("nan")
    if np.all(deltas == deltas[0]):
        return 0.0 if deltas[0] < bound else 1.0
    return float(stats.ttest_1samp(deltas, bound, alternative="less").pvalue)


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
        art = np.array([good[s]["results"][v].get("total_bytes", good[s]["meta"]["size"]["total_bytes"])
                        for s in seeds])  # the bytes of the artifact scored (older results: training's)
        p = one_sided_p(d_nats) if v != "sliding" else float("nan")
        p_record = one_sided_p(d_nats, -RECORD_DELTA_NATS) if v != "sliding" else float("nan")
        first = good[seeds[0]]["results"][v]
        rows.append({"variant": v, "seeds": len(seeds), "bpb_mean": bpb.mean(), "bpb_std": _std(bpb),
                     "delta_bpb_mean": d_bpb.mean(), "delta_bpb_std": _std(d_bpb), "delta_nats_mean": d_nats.mean(),
                     "p_value": p, "p_value_record": p_record,
                     "meets_record_criterion": bool(v != "sliding" and p_record < RECORD_P_VALUE),
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


def _legend(ax) -> None:
    """A legend where something is labelled (an empty panel, e.g. one seed's gap plot, gets none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def ordered_stream(path: Path) -> dict:
    """A stream sorted by first scored target (rank slices interleave back into stream order)."""
    try:
        s = load_stream(path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable stream ({type(e).__name__}: {str(e)[:80]}): a truncated file; "
                         f"run evaluate on that run again with --fresh") from None
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
    _legend(a)
    end = grid[-1] if len(gaps) else 1
    for v, g in gaps.items():
        legal = run["results"][v]["legal"]
        b.plot(grid, np.mean(g, axis=0), lw=1.1, ls="-" if legal else "--", color=_color(v), label=v)
    b.axhline(0, color="k", lw=0.8)
    b.set_xlim(0.05 * end, end)  # the first windows' running mean is noise
    b.set_xlabel("position in the validation stream (tokens)")
    b.set_ylabel("cumulative bpb minus sliding's")
    b.set_title(f"Gap to sliding as the stream is scored (mean of {len(good)} seed(s))")
    _legend(b)
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
    _legend(ax)
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


def plot_training_curves(a, b, metas: dict) -> str:
    """Train loss on axes `a` and validation bpb on `b`, one line per seed's meta.json.

    When every run is a record profile, the run's published curves (8×H100, seeds 42, 7, 2024) are
    drawn beneath in grey, step for step: a reproduction of the run should lie on them. Returns a
    sentence saying what was drawn.
    """
    shown = bool(metas) and all(record_difference(m) is None for m in metas.values())
    if shown:
        published = load_published()["seeds"]
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
    if shown:  # the first steps' losses (7-8 nats) would flatten the rest
        a.set_ylim(top=min(4.0, a.get_ylim()[1]))
        b.set_ylim(top=min(2.0, b.get_ylim()[1]))
    _legend(a)
    _legend(b)
    return ("The run's published curves (grey, dotted) are drawn beneath: a reproduction should lie on them."
            if shown else not_compared(next(iter(metas.values()))) if metas else NOT_COMPARABLE)


def figure_training(runs: dict, out: Path) -> list[Path]:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    plot_training_curves(a, b, {seed: run["meta"] for seed, run in ok_runs(runs).items()})
    fig.tight_layout()
    return _save(fig, out, "training_curves")


CHALLENGE_EVAL_SECONDS = 600  # the challenge caps evaluation at 10 minutes ...
CHALLENGE_GPUS = 8  # ... on 8×H100


def eval_hardware(runs: dict) -> dict:
    """Where the evaluation seconds of the finished seeds were measured, from their results.json.

    Per variant each entry records the device (`backends.device`: "cpu" or the GPU's name), the real
    processes (`world_size`), the ranks emulated on them (`settings.virtual_ranks`) and the CPU threads.
    The challenge's 600 s cap applies to seconds measured on 8 real GPUs only: emulated ranks run one
    after another on fewer GPUs, and CPU seconds measure another machine altogether. Returns the axis
    label, whether to draw the cap, and the sentence saying why when it is not drawn.
    """
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
                "why_no_cap": f"No {CHALLENGE_EVAL_SECONDS} s cap line: these are CPU seconds; the challenge's cap is "
                              f"{CHALLENGE_EVAL_SECONDS} s on {CHALLENGE_GPUS}×H100."}
    label = f"evaluation seconds on {' / '.join(f'{w}× {d}' for w in worlds for d in devices)}"
    if virtual:
        label += f", {'/'.join(map(str, virtual))} ranks emulated"
    cap = worlds == [CHALLENGE_GPUS] and not virtual and "cpu" not in devices
    why = "" if cap else (
        f"No {CHALLENGE_EVAL_SECONDS} s cap line: "
        + (f"{'/'.join(map(str, virtual))} ranks emulated on {'/'.join(map(str, worlds))} real GPU(s) run one after "
           f"another, so these are not {CHALLENGE_GPUS}-GPU seconds." if virtual else
           f"seconds on {'/'.join(map(str, worlds))} GPU(s), not {CHALLENGE_GPUS} real GPUs."))
    return {"label": label, "cap": cap, "why_no_cap": why}


def legal_front(rows: list[dict]) -> list[dict]:
    """The legal variants no other legal variant beats on both axes (fewer seconds and lower Δ bpb),
    in order of seconds: the best Δ each evaluation budget buys."""
    legal = sorted((r for r in rows if r["legal"] and math.isfinite(r["eval_seconds_mean"])),
                   key=lambda r: (r["eval_seconds_mean"], r["delta_bpb_mean"]))
    front, best = [], math.inf
    for r in legal:
        if r["delta_bpb_mean"] < best:
            front.append(r)
            best = r["delta_bpb_mean"]
    return front


def plot_eval_budget(ax, rows: list[dict], hardware: dict, seeds: int) -> str:
    """Every variant's Δ bpb vs sliding (mean ± std over seeds) against its evaluation seconds on `ax`:
    legal variants as circles, not-legal ones as red crosses, the legal Pareto front as a step line,
    and the challenge's 600 s cap (gid `challenge_cap`) only when `hardware` says the seconds are 8
    real GPUs' (`eval_hardware`). Returns the note the figure carries (why it has no cap line)."""
    for i, r in enumerate(sorted(rows, key=lambda r: r["eval_seconds_mean"])):
        legal = r["legal"]
        ax.errorbar(r["eval_seconds_mean"], r["delta_bpb_mean"], yerr=r["delta_bpb_std"], fmt="o" if legal else "X",
                    ms=5 if legal else 7, capsize=2, lw=0.8, color=_color(r["variant"]) if legal else "tab:red",
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


def figure_eval_budget(runs: dict, out: Path) -> list[Path]:
    """`eval_budget.png/.svg`: the eval-time frontier of the aggregated table (`plot_eval_budget`)."""
    plt = _plt()
    rows = [r for r in aggregate(runs) if math.isfinite(r["eval_seconds_mean"])]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    plot_eval_budget(ax, rows, eval_hardware(runs), len(ok_runs(runs)))
    fig.tight_layout()
    return _save(fig, out, "eval_budget")


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
    figures = []
    if ok_runs(runs):
        for f in (figure_cumulative, figure_chunk_delta, figure_documents, figure_training, figure_eval_budget):
            figures += f(runs, out)
    return {"seeds": list(runs), "failed": [s for s, r in runs.items() if "failed" in r], "rows": agg,
            "figures": [str(p) for p in figures], "tables": [str(out / n) for n in
                                                              ("ablation.md", "ablation.csv", "ablation_per_seed.csv")]}
