"""Statistics over seeds and along the stream: the numbers the report's tables and figures show.

Owns the aggregate over the seeds that finished (mean ± std of bpb, the *paired* Δ vs `sliding` on
the same checkpoint, one-sided t-tests against 0 and against −0.005 nats, the challenge's record
criterion), the per-seed rows, the legal eval-time front, and the per-stream quantities (cumulative bpb,
bpb per chunk of target positions). A library module: it reads no file and imports no stage; its input is
the report's runs mapping `{seed: {"meta", "results", "dir"} or {"failed": reason}}` or a stream's arrays.
"""

from __future__ import annotations

import math

import numpy as np

RECORD_DELTA_NATS = 0.005  # the challenge: a new record must beat the old by 0.005 nats ...
RECORD_P_VALUE = 0.01  # ... at p < 0.01
LN2 = math.log(2)


def ok_runs(runs: dict) -> dict:
    """The seeds that finished (a failed seed holds `failed` instead of meta and results)."""
    return {s: r for s, r in runs.items() if "failed" not in r}


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


def std(x: np.ndarray) -> float:
    """The sample standard deviation over seeds (ddof 1); 0 for one seed."""
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


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
        rows.append({"variant": v, "seeds": len(seeds), "bpb_mean": bpb.mean(), "bpb_std": std(bpb),
                     "delta_bpb_mean": d_bpb.mean(), "delta_bpb_std": std(d_bpb), "delta_nats_mean": d_nats.mean(),
                     "p_value": p, "p_value_record": p_record,
                     "meets_record_criterion": bool(v != "sliding" and p_record < RECORD_P_VALUE),
                     "eval_seconds_mean": secs.mean(), "artifact_bytes_mean": art.mean(),
                     "legal": bool(first.get("legal"))})
    return rows


def per_seed_rows(runs: dict) -> list[dict]:
    """One row per seed and variant (a failed seed: one row with its reason), Δ bpb vs that seed's sliding."""
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


# ----------------------------------------------------------------------------------------------
# Along one stream (`<variant>.npz` sorted by first scored target: report.ordered_stream)

def scored_end(stream: dict) -> np.ndarray:
    """Per window, the position just after its last scored target: the x of every along-the-stream curve."""
    return stream["first_scored"] + stream["num_scored"]


def cumulative_bpb(stream: dict) -> np.ndarray:
    """bpb of everything scored up to and including each window (the running score as the stream is read)."""
    return np.cumsum(stream["nats"]) / LN2 / np.maximum(np.cumsum(stream["bytes"]), 1e-9)


def chunk_bpb(stream: dict, edges: np.ndarray) -> np.ndarray:
    """bpb of each stream chunk [edges[i], edges[i+1]) of target positions (windows by first scored target)."""
    idx = np.clip(np.searchsorted(edges, stream["first_scored"], side="right") - 1, 0, len(edges) - 2)
    nats = np.bincount(idx, stream["nats"], minlength=len(edges) - 1)
    nbytes = np.bincount(idx, stream["bytes"], minlength=len(edges) - 1)
    return nats / LN2 / np.maximum(nbytes, 1e-9)
