"""What the notebooks call: typed config from plain parameters, data preparation, and stage launches.

Owns the bridge between a notebook's parameters cell (a few plain values, possibly injected by
papermill as strings) and the library: validation of names and types, the run folder layout, and
launching training / evaluation as `torchrun` over the profile's process count (capped by the GPUs
visible; one process on the CPU) with the log streamed into the cell line by line, and the export
stage. A stage launched from a notebook gets its config as a file and never reads the record's
environment variables: a stray `SEED` in the kernel's environment changes nothing. A killed kernel
loses at most `checkpoint_every` steps: the next launch resumes from the run folder's checkpoint.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import files
from .config import RunConfig, preset, resolve_seed_steps
from .runfolder import RunFolder

PARAMETERS = {"profile": str, "seed": int, "run_dir": str, "overrides": str, "data_root": str}
EXPORT_PARAMETERS = {"bits": int, "clip_quantile": float, "passthrough_max_numel": int}  # notebook 03
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FINEWEB_TRAIN_SHARDS = 80  # the challenge's 8 B training tokens


def project_path(path: str | Path) -> str:
    """Relative paths are taken from the project root, so JupyterLab (cwd notebooks/) and papermill agree."""
    p = Path(path)
    return str(p if p.is_absolute() else PROJECT_ROOT / p)




def check_parameters(values: dict, allowed: dict = PARAMETERS) -> dict:
    """Coerce the notebook parameters to their types; refuse unknown names (papermill only warns)."""
    unknown = set(values) - set(allowed)
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {sorted(unknown)}: expected {sorted(allowed)}")
    out = {}
    for k, v in values.items():
        try:
            out[k] = allowed[k](v)
        except (TypeError, ValueError):
            raise ValueError(f"notebook parameter {k}={v!r} is not a valid {allowed[k].__name__}") from None
    for k in ("run_dir", "data_root"):
        if k in out:
            out[k] = project_path(out[k])
    return out


@dataclass(frozen=True)
class Session:
    """A pipeline notebook's validated parameters and the typed config they make."""

    profile: str
    seed: int
    run_dir: Path
    data_root: Path
    overrides: str
    cfg: RunConfig
    extra: dict  # the notebook's own parameters beyond the five common ones (e.g. 03's quantization)


def setup(**params) -> Session:
    """What every pipeline notebook's first code cell calls with its parameters."""
    p = check_parameters(params, {**PARAMETERS, **EXPORT_PARAMETERS})
    missing = set(PARAMETERS) - set(p)
    if missing:
        raise ValueError(f"notebook parameter(s) {sorted(missing)} missing")
    cfg = make_config(p["profile"], p["seed"], p["overrides"], p["data_root"])
    extra = {k: v for k, v in p.items() if k not in PARAMETERS}
    return Session(p["profile"], p["seed"], Path(p["run_dir"]), Path(p["data_root"]), p["overrides"], cfg, extra)


def parse_overrides(text: str) -> list[str]:
    """`"a=1, b.c=2"` or one per line -> ["a=1", "b.c=2"]."""
    items = [t.strip() for line in str(text or "").splitlines() for t in line.split(",")]
    return [t for t in items if t]


def dataset_paths(profile: str, data_root: str | Path) -> dict:
    """The profile's dataset and tokenizer (embedded corpus or FineWeb, as its preset names them) under `data_root`."""
    root, tc = Path(project_path(data_root)), preset(profile).train
    return {"train.data_path": str(root / "datasets" / Path(tc.data_path).name),
            "train.tokenizer_path": str(root / "tokenizers" / Path(tc.tokenizer_path).name)}


def uses_embedded_corpus(profile: str) -> bool:
    from .corpus import EMBEDDED_NAME

    return Path(preset(profile).train.data_path).name == EMBEDDED_NAME


def make_config(profile: str, seed: int, overrides: str = "", data_root: str = "data") -> RunConfig:
    """The run's typed config: the preset, its dataset under `data_root`, the seed, then the overrides.

    `record_1gpu` then takes the published step count of its seed unless the overrides set iterations.
    """
    cfg = preset(profile).with_overrides({**dataset_paths(profile, data_root), "train.seed": seed})
    over = parse_overrides(overrides)
    return resolve_seed_steps(profile, cfg.with_overrides(over), over)


def prepare_data(profile: str, data_root: str | Path, log=print) -> dict:
    """The embedded corpus for the smoke profiles, the FineWeb export for the record profiles (cached either way)."""
    from . import corpus

    if uses_embedded_corpus(profile):
        return corpus.build_embedded(data_root, log=log)
    return corpus.download_fineweb(data_root, "sp1024", FINEWEB_TRAIN_SHARDS, log=log)


def num_processes(cfg: RunConfig) -> int:
    """Processes a launch starts: the profile's `nproc`, capped by the GPUs visible (1 on the CPU),
    rounded down to a divisor of the run's 8-way accumulation so every count does the same math."""
    import torch

    n = min(cfg.nproc, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    n = max(n, 1)
    while cfg.train.grad_accum_total % n:
        n -= 1
    return n


def launch(args: list[str], nproc: int = 1, log=print, interrupt_timeout: float = 120.0) -> int:
    """Run `python -m dyneval ARGS` (under torchrun when nproc > 1), streaming its output line by line.

    Interrupting the kernel (JupyterLab's stop button) signals the kernel's whole process group, so the
    stage gets SIGINT too and checkpoints at its next step boundary. The cell then waits for it to exit,
    still streaming its log, for up to `interrupt_timeout` seconds (a second interrupt stops waiting),
    terminates it if it is still running, and raises KeyboardInterrupt so the cell shows the interruption.
    """
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dyneval", *args]
    else:
        cmd = [sys.executable, "-m", "dyneval", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    # A reader thread feeds a queue and the kernel's main thread prints: output lands in this cell, and
    # waits have timeouts, so an interrupt is handled even while the stage is silent.
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    last = []

    def relay(deadline: float | None = None) -> bool:
        """Log the stage's lines until its output ends (True) or `deadline` passes (False)."""
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                continue
            if line is None:
                return True
            line = line.rstrip("\n")
            if line.startswith("{") and len(line) > 300:  # the config line: long, and in meta.json anyway
                line = line[:300] + " ..."
            log(line)
            last[:] = (last + [line])[-5:]

    try:
        relay()
    except KeyboardInterrupt:
        log(f"interrupted: waiting up to {interrupt_timeout:.0f} s for `dyneval {args[0]}` to write its checkpoint")
        try:
            if not relay(time.monotonic() + interrupt_timeout):
                log(f"`dyneval {args[0]}` still running after {interrupt_timeout:.0f} s: terminating it")
        except KeyboardInterrupt:
            log(f"interrupted again: terminating `dyneval {args[0]}`")
        _stop(proc)
        raise KeyboardInterrupt(f"`dyneval {args[0]}` interrupted (exit status {proc.returncode}): running the "
                                "cell again resumes from its checkpoint") from None
    rc = proc.wait()
    if rc:
        raise RuntimeError(f"`dyneval {args[0]}` exited with status {rc}: {' | '.join(last)[-400:]}")
    return rc


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Wait for `proc` to exit; SIGTERM (a checkpoint at the next step) if it does not, SIGKILL after `grace`."""
    for send in (None, proc.terminate, proc.kill):
        if send:
            send()
        try:
            proc.wait(timeout=grace if send else 1.0)
            return
        except subprocess.TimeoutExpired:
            pass


def write_config(cfg: RunConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, cfg.to_dict(), indent=1)
    return path


def train_stage(cfg: RunConfig, run_dir: str | Path, log=print) -> dict:
    """Train into `run_dir` (resuming a checkpoint left by an interrupted run); return meta.json.

    A finished run of exactly this config is not trained again.
    """
    run = RunFolder(run_dir)
    if run.finished and run.read_meta().get("config") == cfg.to_dict():
        log(f"{run.meta} exists for this config: training skipped")
        return run.read_meta()
    refuse_other_run(cfg, run.path)
    path = write_config(cfg, run.config_file)
    launch(["train", "--config", str(path), "--out", str(run.path), "--resume"], num_processes(cfg), log=log)
    return run.read_meta()


def refuse_other_run(cfg: RunConfig, run_dir: Path) -> None:
    """A run_dir holding a finished run or a checkpoint of another config is refused (never trained over)."""
    from .train import _first_difference

    run = RunFolder(run_dir)
    if run.finished:
        have = run.read_meta().get("config") or {}
        raise ValueError(f"run_dir {run_dir} holds a finished run of another config "
                         f"({_first_difference(have, cfg.to_dict()).replace('checkpoint', 'there')}): choose another "
                         f"run_dir, or delete that run to train this config there")
    ckpt = run.checkpoint
    if ckpt.is_file():
        import torch

        try:
            have = torch.load(ckpt, map_location="cpu", weights_only=True).get("config") or {}
        except Exception:  # unreadable: the training stage names it
            return
        if have != cfg.to_dict():
            raise ValueError(f"run_dir {run_dir} holds a checkpoint of another config "
                             f"({_first_difference(have, cfg.to_dict()).replace('checkpoint', 'there')}): choose "
                             f"another run_dir, or delete {ckpt} to train this config there")


def export_stage(run_dir: str | Path, settings=None, log=print) -> dict:
    """The export stage on a trained run (in this process): skipped when `export.json` already holds
    these settings and the artifact on disk is the one it describes."""

    from . import quant
    from .config import run_config
    from .export import export

    run = RunFolder(run_dir)
    settings = settings or quant.QuantSettings()
    done, artifact = run.export_record, run.artifact(settings.bits)
    if done.is_file() and artifact.is_file():
        prev = json.loads(done.read_text())
        if prev["settings"] == asdict(settings) and \
                prev["artifact_sha256"] == files.sha256_file(artifact):
            log(f"{artifact} already holds these quantization settings: export skipped")
            return prev
    return export(run.path, run_config(run.path), settings, log=log)


def evaluate_stage(cfg: RunConfig, run_dir: str | Path, variants: str = "all", log=print) -> dict:
    """Every variant on the run's artifact, into `run_dir/eval`; return results.json."""
    run = RunFolder(run_dir)
    launch(["evaluate", "--run-dir", str(run.path), "--variants", variants, "--out", str(run.eval_dir)],
           num_processes(cfg), log=log)
    return files.read_json(run.results)
