"""What a run will be, before it trains: its parameters by optimizer group, its artifact budget, its schedules.

Notebook 02 shows these before it launches training. Everything is computed from the resolved config
alone, on shapes (the model is built on torch's `meta` device: no memory, no weights, no data), with the
functions training itself uses: `optim.split_parameters` for the groups, `quant.category` /
`is_control` / the passthrough threshold for how the exporter stores each tensor, and
`optim.lr_scale` / `optim.muon_momentum` / the late-QAT threshold for the schedules. A library module:
it imports no stage.
"""

from __future__ import annotations

import numpy as np
import torch

from . import quant
from .config import RunConfig
from .model import GPT
from .optim import lr_scale, muon_momentum, split_parameters
from .published_run import load_published

GROUP_OPTIMIZER = {"tok": "AdamW (token lr)", "muon": "Muon (matrix lr)", "scalar": "AdamW (scalar lr)",
                   "head": "Adam (head lr)"}


def shape_model(cfg: RunConfig) -> GPT:
    """The run's model with shapes only (torch's meta device): parameters can be counted, not used."""
    with torch.device("meta"):
        return GPT(cfg.model)


def parameter_groups(cfg: RunConfig) -> list[dict]:
    """One row per optimizer group (the run's split: token tables, block matrices, scalars, untied head)."""
    groups = split_parameters(shape_model(cfg))
    total = sum(p.numel() for ps in groups.values() for p in ps)
    return [{"group": g, "optimizer": GROUP_OPTIMIZER[g], "tensors": len(ps), "params": sum(p.numel() for p in ps),
             "share": sum(p.numel() for p in ps) / total} for g, ps in groups.items() if ps]


def _treatment(name: str, t: torch.Tensor, settings: quant.QuantSettings) -> tuple[str, int]:
    """How `quant.quantize_state_dict` stores a tensor, and its bytes before zstd: int8 values, plus per-row
    fp16 scales for a matrix; a vector's one scale is fp16 on the int6 grid, fp32 on the int8 one."""
    rows = t.shape[0] if t.ndim == 2 else 1
    if not t.is_floating_point() or t.numel() <= settings.passthrough_max_numel:
        return "passthrough (fp16)", 2 * t.numel()
    if quant.is_control(name):  # (imported by quant on every branch: config.py or, split, model.py)
        return "control (fp32)", 4 * t.numel()
    if quant.category(name) in quant.INT6_CATEGORIES:
        return f"int{settings.bits} (int8 storage)", t.numel() + 2 * rows
    return "int8", t.numel() + (2 * rows if t.ndim == 2 else 4)


def stored_bytes(cfg: RunConfig, settings: quant.QuantSettings = quant.QuantSettings()) -> list[dict]:
    """Per storage treatment of the exporter: tensors, parameters, and bytes before compression."""
    out: dict[str, dict] = {}
    for name, t in shape_model(cfg).state_dict().items():
        kind, nbytes = _treatment(name, t, settings)
        row = out.setdefault(kind, {"treatment": kind, "tensors": 0, "params": 0, "stored_bytes": 0})
        row["tensors"] += 1
        row["params"] += t.numel()
        row["stored_bytes"] += nbytes
    return list(out.values())


def artifact_budget(cfg: RunConfig, settings: quant.QuantSettings = quant.QuantSettings()) -> dict:
    """The artifact against the challenge's cap, estimated before training.

    zstd-22 of int6 values in int8 storage is what decides the size, and it depends on the trained
    weights; the estimate scales this config's stored bytes by the ratio the run achieved (its published
    int6 + zstd model bytes over the stored bytes of the record config, about 0.57), plus this package's
    code bytes. An estimate only: the export stage measures the real artifact.
    """
    from .config import preset

    published = load_published()["seeds"]
    run_model_bytes = float(np.mean([log["int6_zstd_model_bytes"] for log in published.values()]))
    ratio = run_model_bytes / sum(r["stored_bytes"] for r in stored_bytes(preset("record")))
    rows = stored_bytes(cfg, settings)
    stored = sum(r["stored_bytes"] for r in rows)
    model = round(stored * ratio)
    code = quant.code_bytes()
    return {"rows": rows, "stored_bytes": stored, "compression_ratio": ratio, "estimated_model_bytes": model,
            "code_bytes": code, "estimated_total_bytes": model + code, "cap_bytes": quant.SIZE_CAP_BYTES,
            "estimated_headroom_bytes": quant.SIZE_CAP_BYTES - model - code}


def training_schedule(cfg: RunConfig, step_ms: float | None = None) -> dict:
    """The lr scale, Muon's momentum and late QAT's flag at every step, as `train.train_step` sets them.

    Under a wall-clock cap (`train.max_wallclock_seconds`, the record) the warmdown runs in time, so the
    steps depend on the step time: `step_ms` (default: the published run's, its 600 s over its mean stop
    step, about 107 ms on 8×H100); the run then stops at the cap. Without a cap the schedule is in steps.
    """
    tc = cfg.train
    cap_ms = 1000.0 * tc.max_wallclock_seconds
    if cap_ms and step_ms is None:
        stops = [log["stop_step"] for log in load_published()["seeds"].values()]
        step_ms = cap_ms / float(np.mean(stops))
    last = min(tc.iterations, int(cap_ms // step_ms)) if cap_ms else tc.iterations
    steps = np.arange(last)
    lr = np.array([lr_scale(int(s), s * (step_ms or 0.0), tc.iterations, tc.warmdown_iters, cap_ms) for s in steps])
    mom = np.array([muon_momentum(cfg.optim, int(s)) for s in steps])
    below = np.flatnonzero(lr < tc.late_qat_threshold) if tc.late_qat_threshold else np.array([], dtype=int)
    qat_step = int(steps[below[0]]) if below.size else None  # set once and never cleared (train.late_qat)
    qat = (steps >= qat_step).astype(float) if qat_step is not None else np.zeros(last)
    below_one = np.flatnonzero(lr < 1.0)
    return {"steps": steps, "lr_scale": lr, "muon_momentum": mom, "qat_flag": qat, "qat_step": qat_step,
            "qat_threshold": tc.late_qat_threshold, "warmdown_start": int(steps[below_one[0]]) if below_one.size else None,
            "step_ms": step_ms, "capped": bool(cap_ms)}
