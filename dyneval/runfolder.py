"""The run folder: where each stage's output lives, in one place.

A training run folder holds (docs/NUMERICS.md, 'The artifact', for the artifact's format):

    config.json          the config a notebook or reproduce wrote before launching training
    checkpoint.pt        training state of an interrupted run (removed when it finishes)
    final_model.pt       the trained weights (EMA applied)
    final_model.int6.ptz the artifact (`final_model.int{bits}.ptz` for another grid)
    export.json          the export's settings, artifact hash and round-trip score
    size_report.json     the artifact's bytes + code bytes against the cap
    meta.json            the finished run: resolved config, commit, versions, scores, the latest export
    train.log            training's log
    eval/                the evaluate stage's output: results.json, <variant>.npz, doc_starts.npy, tables
    FAILED.json          a reproduction's seed that failed

Every module names these files through `RunFolder`; a finished run's config is read here (`config_dict`),
the one reader `config.run_config` builds on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import files

ARTIFACT = "final_model.int6.ptz"  # the run's artifact name (6 bits); other grids: `artifact_name(bits)`
FINAL_WEIGHTS = "final_model.pt"
CHECKPOINT = "checkpoint.pt"
META = "meta.json"
CONFIG = "config.json"
EXPORT = "export.json"
SIZE_REPORT = "size_report.json"
TRAIN_LOG = "train.log"
EVAL_DIR = "eval"
RESULTS = "results.json"
FAILED = "FAILED.json"


def artifact_name(bits: int) -> str:
    """The artifact's file name says its grid: `final_model.int6.ptz` (the run's name, kept byte for byte
    for 6 bits), `final_model.int4.ptz` for a 4-bit export, and so on."""
    return f"final_model.int{bits}.ptz"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one training run folder, and what its meta.json says of it."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def meta(self) -> Path:
        return self.path / META

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def final_weights(self) -> Path:
        return self.path / FINAL_WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def export_record(self) -> Path:
        return self.path / EXPORT

    @property
    def size_report(self) -> Path:
        return self.path / SIZE_REPORT

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def results(self) -> Path:
        """The evaluate stage's results.json of this run (`eval/results.json`)."""
        return self.eval_dir / RESULTS

    @property
    def failed(self) -> Path:
        return self.path / FAILED

    @property
    def finished(self) -> bool:
        return self.meta.is_file()

    def artifact(self, bits: int = 6) -> Path:
        return self.path / artifact_name(bits)

    def read_meta(self) -> dict:
        """meta.json as a dict (a truncated or non-object file is a one-line error naming it)."""
        return files.read_json(self.meta)

    def latest_artifact(self) -> Path:
        """The artifact the run's latest export wrote (meta.json's `export.artifact`; the run's name before)."""
        if self.meta.is_file():
            try:
                name = json.loads(self.meta.read_text()).get("export", {}).get("artifact")
            except (json.JSONDecodeError, AttributeError):
                raise ValueError(f"{self.meta}: not a JSON object with an `export` entry: train the run again") from None
            if name:
                return self.path / Path(name).name
        return self.path / ARTIFACT

    def qat_flag_set(self) -> bool:
        """Whether training set late QAT's flag (meta.json says; a run that does not say did, as every
        published one did)."""
        return self.read_meta().get("qat_enabled_at_end", True)

    def config_dict(self, unfinished: bool = False) -> dict:
        """The run's config as written: meta.json's `config` (a finished run); with `unfinished`, the
        config.json written before training when there is no meta.json yet."""
        if self.meta.is_file():
            return files.read_json(self.meta)["config"]
        if unfinished and self.config_file.is_file():
            return files.read_json(self.config_file)
        if unfinished:
            raise FileNotFoundError(f"{self.path}: neither meta.json nor config.json: is it a training run folder?")
        raise FileNotFoundError(f"{self.meta}: no meta.json: is {self.path} a finished training run?")
