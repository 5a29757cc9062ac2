"""What the notebooks call: typed config from plain parameters, data preparation, and stage launches.

Owns the bridge between a notebook's parameters cell (a few plain values, possibly injected by
papermill as strings) and the library: validation of names and types, the run folder layout, and
launching training / evaluation as `torchrun` over every visible GPU (or one process on the CPU)
with the log streamed into the cell line by line. A killed kernel loses at most `checkpoint_every`
steps: the next launch resumes from the run folder's checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import files
from .config import RunConfig, preset

PARAMETERS = {"profile": str, "seed": int, "run_dir": str, "overrides": str, "data_root": str}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve(path: str | Path) -> str:
    """Relative paths are taken from the project root, so JupyterLab (cwd notebooks/) and papermill agree."""
    p = Path(path)
    return str(p if p.is_absolute() else PROJECT_ROOT / p)
FINEWEB_TRAIN_SHARDS = 80  # the challenge's 8 B training tokens


def check_parameters(values: dict) -> dict:
    """Coerce the notebook parameters to their types; refuse unknown names (papermill only warns)."""
    unknown = set(values) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {sorted(unknown)}: expected {sorted(PARAMETERS)}")
    out = {}
    for k, v in values.items():
        try:
            out[k] = PARAMETERS[k](v)
        except (TypeError, ValueError):
            raise ValueError(f"notebook parameter {k}={v!r} is not a valid {PARAMETERS[k].__name__}") from None
    for k in ("run_dir", "data_root"):
        if k in out:
            out[k] = resolve(out[k])
    return out


def parse_overrides(text: str) -> list[str]:
    """`"a=1, b.c=2"` or one per line -> ["a=1", "b.c=2"]."""
    items = [t.strip() for line in str(text or "").splitlines() for t in line.split(",")]
    return [t for t in items if t]


def dataset_paths(profile: str, data_root: str | Path) -> dict:
    root = Path(resolve(data_root))
    if profile == "smoke":
        return {"train.data_path": str(root / "datasets" / "embedded_sp1024"),
                "train.tokenizer_path": str(root / "tokenizers" / "embedded_1024_bpe.model")}
    return {"train.data_path": str(root / "datasets" / "fineweb10B_sp1024"),
            "train.tokenizer_path": str(root / "tokenizers" / "fineweb_1024_bpe.model")}


def make_config(profile: str, seed: int, overrides: str = "", data_root: str = "data") -> RunConfig:
    """The run's typed config: the preset, its dataset under `data_root`, the seed, then the overrides."""
    cfg = preset(profile).with_overrides({**dataset_paths(profile, data_root), "train.seed": seed})
    return cfg.with_overrides(parse_overrides(overrides))


def prepare_data(profile: str, data_root: str | Path, log=print) -> dict:
    """The embedded corpus for `smoke`, the FineWeb export for the record profiles (cached either way)."""
    from . import corpus

    if profile == "smoke":
        return corpus.build_embedded(data_root, log=log)
    return corpus.download_fineweb(data_root, "sp1024", FINEWEB_TRAIN_SHARDS, log=log)


def num_processes() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def launch(args: list[str], nproc: int | None = None, log=print) -> int:
    """Run `python -m dyneval ARGS` (under torchrun when several GPUs), streaming its output line by line."""
    nproc = nproc or num_processes()
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dyneval", *args]
    else:
        cmd = [sys.executable, "-m", "dyneval", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    last = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("{") and len(line) > 300:  # the config line: long, and in meta.json anyway
            line = line[:300] + " ..."
        log(line)
        last = (last + [line])[-5:]
    rc = proc.wait()
    if rc:
        raise RuntimeError(f"`dyneval {args[0]}` exited with status {rc}: {' | '.join(last)[-400:]}")
    return rc


def write_config(cfg: RunConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, cfg.to_dict(), indent=1)
    return path


def train_stage(cfg: RunConfig, run_dir: str | Path, log=print) -> dict:
    """Train into `run_dir` (resuming a checkpoint left by an interrupted run); return meta.json."""
    run_dir = Path(run_dir)
    meta = run_dir / "meta.json"
    if meta.is_file() and json.loads(meta.read_text())["config"] == cfg.to_dict():
        log(f"{meta} exists for this config: training skipped")
        return json.loads(meta.read_text())
    path = write_config(cfg, run_dir / "config.json")
    launch(["train", "--config", str(path), "--out", str(run_dir), "--resume"], log=log)
    return json.loads(meta.read_text())


def evaluate_stage(run_dir: str | Path, variants: str = "all", log=print) -> dict:
    """Every variant on the run's artifact, into `run_dir/eval`; return results.json."""
    run_dir = Path(run_dir)
    launch(["evaluate", "--run-dir", str(run_dir), "--variants", variants, "--out", str(run_dir / "eval")], log=log)
    return json.loads((run_dir / "eval" / "results.json").read_text())
