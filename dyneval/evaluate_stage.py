"""The evaluate stage: the registry's variants over one artifact, into a results folder.

Owns what `python -m dyneval evaluate` does (torchrun-capable): every variant starts from fresh weights
dequantized from the artifact (variants.py), and its score lands in `results.json` (rewritten atomically
after each variant, so nothing computed is lost), one per-window stream `<variant>.npz` each,
`doc_starts.npy`, and the run tables (`report.write_run_tables`). One process writes into a results folder
at a time; variants already scored there on the same artifact and config are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import adapt, cpu, data, distributed as dist_utils, files, graphs, quant, variants as registry
from .adapt import Quirks
from .config import RunConfig
from .evaluate import require_finite
from .report import read_results, write_run_tables
from .runfolder import RESULTS
from .train import Interrupts
from .variants import EvalOptions

RESULT_FILES = (RESULTS, "ablation.md", "ablation.csv", "doc_starts.npy")


def evaluate_artifact(cfg: RunConfig, artifact: Path, out: Path, variants: list[str],
                      options: EvalOptions = EvalOptions(), log=print) -> dict:
    """Run `variants` on the artifact; write results.json, streams and tables into `out`; return results.

    One process writes into `out` at a time (a lock, as for train and reproduce). Variants already in its
    results.json for the same artifact and config are kept, not run again (`options.fresh` starts over).
    SIGINT and SIGTERM end the call after the variant in flight (KeyboardInterrupt), every file consistent.
    """
    lock = files.lock_folder(out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock, Interrupts() as interrupts:
        run = _open(cfg, artifact, Path(out), options, log)
        done = [n for n in variants if "bpb" in run.results.get(n, {}) and (run.out / f"{n}.npz").is_file()]
        if done:
            log(f"{out}: {', '.join(done)} already scored on this artifact and config: kept (--fresh runs them again)")
        for name in variants:
            if name in done:
                continue
            if interrupts.any_rank():  # between variants: everything scored so far is written
                raise KeyboardInterrupt
            _score(run, name)
        return run.results


@dataclass
class _Run:
    """One evaluate call's shared state: what every variant scores with, and the results so far."""

    cfg: RunConfig
    artifact: Path
    out: Path
    ctx: dist_utils.Context
    inputs: registry.EvalInputs
    quirks: Quirks
    ranks: dist_utils.Ranks
    results: dict
    artifact_size: dict
    log: object
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS


def _open(cfg: RunConfig, artifact: Path, out: Path, options: EvalOptions, log) -> _Run:
    """Set up the call: process group, backends, inputs, earlier results; doc_starts.npy written."""
    quirks = options.quirks_in_force
    ctx = dist_utils.init_context(options.device)
    inputs = registry.evaluation_inputs(cfg, artifact, ctx.device)
    tokens = inputs.tokens
    ranks = registry.default_ranks(cfg, options.virtual_ranks)
    registry.check_virtual_ranks(ranks, tokens, cfg)
    results = load_results(out / RESULTS, inputs.weights.sha256, cfg, options.fresh)
    if ctx.is_main:
        files.output_folder(out)
        if options.fresh:
            start_over(out)
        # document boundaries (target index of each BOS), for per-document figures
        bos = torch.nonzero(tokens[1:] == data.BOS_ID).flatten().cpu().numpy()
        with files.atomic_open(out / "doc_starts.npy") as f:
            np.save(f, np.unique(np.concatenate([[0], bos])).astype(np.int64))
    size = quant.size_report(artifact)  # the bytes of the artifact scored (the report's column)
    artifact_size = {"artifact_bytes": size["model_bytes"], "total_bytes": size["total_bytes"]}
    return _Run(cfg, Path(artifact), out, ctx, inputs, quirks, ranks, results, artifact_size, log)


def _score(run: _Run, name: str) -> None:
    """One variant: run it, record its result and settings, write results.json, its stream and the tables."""
    v, ctx = registry.VARIANTS[name], run.ctx
    job = registry.job_for(v, run.cfg, run.inputs, run.quirks, run.ranks, run.cache)
    if (job.compile or job.compile_dynamic) and not graphs.isolates_recompiles():
        torch._dynamo.reset()  # torch < 2.13: one cache per code object, so each variant starts it empty
    try:
        with heartbeat(run.log if ctx.is_main else None, name):
            res, settings = v.run(job)
    except adapt.DivergedError as err:
        run.results[name] = {"legal": v.legal, "legal_reason": v.reason, "error": str(err)}
        if ctx.is_main:
            files.write_json(run.results_path, run.results)
            write_run_tables(run.results, run.out)
        raise
    require_finite(str(run.artifact), res)  # no NaN score with exit status 0
    settings = {"quirks": asdict(job.quirks), **job.ranks.describe(), **settings,
                "scoring": asdict(run.cfg.eval.scoring), "dtypes": registry.table_dtypes(job)}
    run.results[name] = {**res.summary(), "legal": v.legal, "legal_reason": v.reason, "description": v.description,
                         "faithful": v.faithful, "rank_local": v.rank_local, "settings": settings,
                         "backends": run.inputs.backends, "cpu_threads": torch.get_num_threads(),
                         "openmp": dict(cpu.decision) or None, "artifact": str(run.artifact),
                         "artifact_sha256": run.inputs.weights.sha256, "bits": run.inputs.weights.bits,
                         **run.artifact_size,
                         "eval_config": asdict(run.cfg.eval), "model_config": asdict(run.cfg.model),
                         "world_size": ctx.world_size, "device": str(ctx.device), **registry.compile_record(job, res)}
    if ctx.is_main:
        res.save_stream(run.out / f"{name}.npz")
        files.write_json(run.results_path, run.results)
        write_run_tables(run.results, run.out)
        run.log(f"{name:<26} bpb {res.bpb:.5f} loss {res.loss:.5f} ({res.seconds:.1f} s) "
                f"{'legal' if v.legal else 'NOT LEGAL'}")


def _same_origin(entry: dict, sha: str, cfg: RunConfig) -> bool:
    return entry.get("artifact_sha256") == sha and entry.get("eval_config") == asdict(cfg.eval) \
        and entry.get("model_config") == asdict(cfg.model)


def load_results(path: Path, sha: str, cfg: RunConfig, fresh: bool) -> dict:
    """Earlier results in `path`, kept only when they scored the same artifact under the same config.

    Anything else is refused (Δs across two models in one table would be meaningless), unless
    `fresh`, which starts the folder's results over.
    """
    if fresh or not path.is_file():
        return {}
    results = read_results(path)  # a truncated file is a one-line error naming it
    other = [n for n, r in results.items() if not _same_origin(r, sha, cfg)]
    if other:
        raise ValueError(f"{path}: holds results of another artifact or config ({other[0]}, ...): "
                         f"use another --out, or --fresh to start its results over")
    return results


def start_over(out: Path) -> None:
    """`--fresh`: remove the folder's earlier results first (results.json before anything it lists), so an
    interruption before the first new variant leaves no old result beside the new files."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    for name in registry.VARIANTS:
        (out / f"{name}.npz").unlink(missing_ok=True)


HEARTBEAT_SECONDS = 30.0  # no stage is silent for longer (a record variant on a GPU can take minutes)


class heartbeat:
    """While a long call runs, `log` a line every HEARTBEAT_SECONDS saying it is still running (a thread
    that only prints: it touches no tensor)."""

    def __init__(self, log, what: str, every: float = HEARTBEAT_SECONDS):
        import threading

        self.log, self.what, self.every = log, what, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        t0 = time.perf_counter()
        while not self.done.wait(self.every):
            self.log(f"{self.what}: still running ({time.perf_counter() - t0:.0f} s)")

    def __enter__(self):
        if self.log is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        return False
