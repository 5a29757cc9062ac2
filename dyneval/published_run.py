"""The run's published logs, and whether a reproduced run compares with them.

Owns the package data `dyneval/published/run397_logs.json` (what the run's three published training logs
printed, seeds 42, 7, 2024), the rule that says whether a reproduced run is the record's (its model, batch,
data, schedule, EMA and step count: `record_difference`), and the published numbers beside a reproduced
run's (`published_comparison`, `published_markdown`). A library module below `report` and `figures`
(both show the published run), so that neither imports the other; it imports no stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def flat(config: dict) -> dict:
    """A resolved config as {"section.name": value} (top-level scalars keep their own name)."""
    return {f"{s}.{k}" if isinstance(sec, dict) else s: v for s, sec in config.items()
            for k, v in (sec.items() if isinstance(sec, dict) else [(None, sec)])}


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
    record, cfg = flat(preset("record").to_dict()), flat(config)
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
