"""The export stage: a trained run's `final_model.pt` -> its artifact, size report and round-trip score.

Owns `python -m dyneval export RUN` and what training calls at its end: the quantizer (quant.py) writes
the artifact, the dequantized weights are scored non-overlapping on training's validation settings (what
the rounding costs, before any adaptation), and the run folder's `export.json`, `size_report.json` and
meta.json's `export` entry record it.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import data, distributed as dist_utils, files, quant
from .config import Scoring, switch_on
from .distributed import Ranks
from .evaluate import Scorer, evaluate_nonoverlap, require_finite
from .model import GPT, configure_backends, model_from_weights
from .runfolder import RunFolder


def export(run_dir: str | Path, cfg, settings: quant.QuantSettings = quant.QuantSettings(), device: str | None = None,
           log=print) -> dict:
    """The export stage: `final_model.pt` -> the artifact, its size report, and its round-trip score.

    Writes `final_model.int6.ptz` (rank 0; `final_model.int{bits}.ptz` for another grid), `size_report.json`
    and `export.json` (the settings, the artifact's sha256 and the non-overlapping val score of the
    dequantized weights). Training calls it at the end; notebook 03 calls it to re-quantize a trained run
    with other settings. Works under torchrun (the score is reduced over ranks) and alone.
    """
    run = RunFolder(run_dir)
    ctx = dist_utils.init_context(device)
    configure_backends(cfg, ctx.device)
    if not run.final_weights.is_file():
        raise FileNotFoundError(f"{run.final_weights}: no final weights: train the run first")
    state = torch.load(run.final_weights, map_location="cpu", weights_only=True)
    artifact = run.artifact(settings.bits)
    if ctx.is_main:
        log(f"export: quantizing to int{settings.bits} and compressing with zstd -{quant.ZSTD_LEVEL} -> "
            f"{artifact.name} ...")
        t0 = time.perf_counter()
        quant.write_artifact(artifact, state, settings)
        log(f"export: {artifact.name} written in {time.perf_counter() - t0:.1f} s")
    dist_utils.barrier()
    policy = switch_on(cfg.train.gpu_dtypes, ctx.device)  # the training's dtype policy: CUDA, or when asked
    template = GPT(cfg.model, init_weights=False).state_dict()  # names, shapes and dtypes only
    model = model_from_weights(cfg.model, quant.load_artifact(artifact, template), ctx.device, policy,
                               source=str(artifact))
    val = data.validation_inputs(cfg.train, cfg.model.vocab_size, ctx.device, ctx.world_size)
    L = cfg.train.train_seq_len
    rt = evaluate_nonoverlap(model, Scorer(val.tokens, val.lut, Scoring(seq_len=L, stride=L, batch_seqs=val.batch_seqs),
                                           Ranks.current(), policy))
    require_finite(str(artifact), rt)  # no NaN score with exit status 0
    size = quant.size_report(artifact)
    out = {"settings": asdict(settings), "bits": settings.bits, "artifact": artifact.name,
           "artifact_sha256": files.sha256_file(artifact), "roundtrip": rt.summary(), "size": size}
    if settings.bits == 6:
        out["int6_roundtrip"] = out["roundtrip"]  # the run's name for it
    if ctx.is_main:
        files.write_json(run.size_report, size)
        files.write_json(run.export_record, out)
        record_export(run, out)
    log(f"int{settings.bits}_roundtrip (before any adaptation) val_loss:{rt.loss:.4f} val_bpb:{rt.bpb:.4f}")
    log(f"artifact: {size['model_bytes']:,} bytes + code {size['code_bytes']:,} = {size['total_bytes']:,} "
        f"(cap {size['cap_bytes']:,}: {'under' if size['under_cap'] else 'OVER'})")
    return out


def record_export(run: RunFolder, exported: dict) -> None:
    """A re-export of a finished run updates its meta.json (what `evaluate --run-dir` scores and the report
    counts): the artifact, its bits and sha256, its size. Training's own numbers stay (`int6_roundtrip`
    is the 6-bit export's score at the end of training)."""
    if not run.finished:
        return  # training writes meta.json itself, after its export
    meta = run.read_meta()
    meta["export"] = {k: exported[k] for k in ("settings", "bits", "artifact", "artifact_sha256", "roundtrip")}
    meta["artifact_sha256"] = exported["artifact_sha256"]
    meta["size"] = exported["size"]
    files.write_json(run.meta, meta)
