"""Configuration, resolved one way: defaults -> preset, file or run folder -> environment (asked) -> overrides.

Owns `resolve` (every command's config, with where each non-default value came from) and `run_config` (a
run folder's config, read through `runfolder.RunFolder`). The sections themselves (the stage dataclasses,
coercion of override strings) are sections.py, the presets presets.py, the record script's environment
variables environ.py; their names are importable from here too (`from dyneval.config import preset`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from . import files
from .environ import ENV_NAMES, ENV_SWITCHES, NOT_REPRODUCED, from_env
from .presets import PRESETS, PUBLISHED_STEPS, STEP_COUNT_PROFILES, preset, published_iterations, resolve_seed_steps
from .runfolder import RunFolder
from .sections import (COMPILE_BACKENDS, SETTINGS_VIEWS, DocLoRASettings, DynamicSettings, EvalConfig,
                       GlobalSGDSettings, KrauseSettings, ModelConfig, OptimConfig, RunConfig, ScoreFirstSettings,
                       Scoring, Switch, TailSettings, TrainConfig, TTTSettings, _build, _coerce, _locate, _split,
                       switch_on)

__all__ = ["COMPILE_BACKENDS", "DocLoRASettings", "DynamicSettings", "ENV_NAMES", "ENV_SWITCHES", "EvalConfig",
           "GlobalSGDSettings", "KrauseSettings", "ModelConfig", "NOT_REPRODUCED", "OptimConfig", "PRESETS",
           "PUBLISHED_STEPS", "Resolved", "RunConfig", "SETTINGS_VIEWS", "STEP_COUNT_PROFILES", "ScoreFirstSettings",
           "Scoring", "Switch", "TTTSettings", "TailSettings", "TrainConfig", "_build", "_coerce", "_locate", "_split", "from_env", "is_run_overridable", "preset",
           "published_iterations", "resolve", "resolve_seed_steps", "run_config", "switch_on"]


@dataclass(frozen=True)
class Resolved:
    """A resolved config and, for every field that differs from the dataclass defaults, where it came from."""

    config: RunConfig
    sources: dict  # "section.field" -> "profile smoke" | "file PATH" | "run DIR" | "env NAME" | "--set"

    def describe(self) -> dict:
        return {"config": self.config.to_dict(), "sources": self.sources}


def _flat(cfg: RunConfig) -> dict:
    """{"section.field": value} (and "nproc")."""
    out = {}
    for sec, d in cfg.to_dict().items():
        out.update({f"{sec}.{k}": v for k, v in d.items()} if isinstance(d, dict) else {sec: d})
    return out


def resolve(profile: str | None = "smoke", *, config_file: str | None = None, run_dir: str | None = None,
            overrides: typing.Iterable[str] = (), environ: typing.Mapping[str, str] | None = None,
            run_overridable: typing.Callable[[str], bool] | None = None) -> Resolved:
    """The one way every command resolves its configuration.

    Order: a run folder's `meta.json` (the truth for `--run-dir`), else a config file, else a profile;
    then the record script's environment variables, only when `environ` is given (the command line's
    `--env`: never implicitly, so a stray `SEED` in a notebook kernel's environment changes nothing);
    then `--set` overrides. With a run folder, `run_overridable(field)` says which fields an override
    may change (evaluation settings, not the model that was trained).
    """
    if run_dir:
        cfg, origin = run_config(run_dir), f"run {run_dir}"
    elif config_file:
        try:
            cfg, origin = RunConfig.from_dict(_config_of(files.read_json(Path(config_file)))), f"file {config_file}"
        except ValueError as e:  # a field's type or value: name the file too
            raise ValueError(e if str(config_file) in str(e) else f"{config_file}: {e}") from None
    else:
        cfg, origin = preset(profile), f"profile {profile}"
    defaults = _flat(RunConfig())
    sources = {k: origin for k, v in _flat(cfg).items() if defaults.get(k) != v}
    env, names = {}, {}
    if environ is not None:
        env = from_env(environ, names)
        sources.update({k: f"env {names[k]}" for k in env})
    sets = dict(_split(o) for o in overrides)
    if run_dir and run_overridable:
        fixed = [k for k in {**env, **sets} if not run_overridable(".".join(_locate(k)))]
        if fixed:
            raise ValueError(f"{run_dir}: {fixed[0]} belongs to the trained model; a run folder's meta.json is "
                             f"taken as is (override evaluation settings only, or retrain)")
    cfg = cfg.with_overrides(env).with_overrides(sets)
    sources.update({".".join(_locate(k)): "--set" for k in sets})
    if not (run_dir or config_file):  # a profile: a step-count profile stops where its seed's run stopped
        stepped = resolve_seed_steps(profile, cfg, [f"{k}={v}" for k, v in {**env, **sets}.items()])
        if stepped.train.iterations != cfg.train.iterations:
            sources["train.iterations"] = f"profile {profile}, published steps of seed {cfg.train.seed}"
        cfg = stepped
    return Resolved(cfg, sources)


def is_run_overridable(field: str) -> bool:
    """Fields an override may change when a run folder's meta.json is the config: how it is evaluated
    and where its data lives, never the model or the training that produced the artifact."""
    return field.startswith("eval.") or field in ("train.data_path", "train.tokenizer_path")


def run_config(run_dir, unfinished: bool = False) -> RunConfig:
    """A run folder's config, the one reader: meta.json's (a finished run), or with `unfinished` the config.json
    written before training (`runfolder.RunFolder.config_dict`)."""
    return RunConfig.from_dict(RunFolder(run_dir).config_dict(unfinished))


def _config_of(obj: dict) -> dict:
    """A config file's sections: the file itself (`config` output), or its "config" entry (`config --sources`
    output, a run's meta.json)."""
    return obj["config"] if isinstance(obj.get("config"), dict) else obj
