"""The sweep stage: an adaptation variant's rates tuned on a stream neither training nor validation saw.

Owns what `python -m dyneval sweep` does. In this challenge the validation set is the test set, so a rate
chosen by its validation score leaks. Here every setting of a grid (`eval.*` fields, cartesian product) is
scored on the run's own artifact on the tuning stream (`data.tune_pattern`: the embedded corpus's tune
split, or FineWeb's last train shard), the lowest tuning bpb is chosen, and only then is validation
scored: once for the choice, once for the setting the run's config holds now (its default), and once
for sliding (the baseline of every Δ), so the JSON says what honest tuning changed. The tuning stream
follows validation's length policy: capped at `eval.max_val_tokens` and trimmed to k*eval_seq_len + 1.

Scoring is the evaluate stage's own: the registry's `Variant.run` through `variants.job_for`, so a swept
variant runs exactly as `evaluate` runs it. Outputs in `--out`: `sweep_<variant>.json` (atomic) and a
heatmap `sweep_<variant>.png`/`.svg` (a line plot for a one-field grid) drawn by `figures.plot_sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import platform
import time
from pathlib import Path

import torch

from . import adapt, data, distributed as dist_utils, figures, files
from .adapt import Quirks
from .config import EvalConfig, RunConfig
from .evaluate import EvalResult, require_finite
from .variants import VARIANTS, EvalInputs, default_ranks, evaluation_inputs, job_for

EVAL_FIELDS = {f.name: f.type for f in dataclasses.fields(EvalConfig)}


def parse_grid(items: list[str], cfg: RunConfig) -> dict[str, list]:
    """`["eval.tail_lr=0.01,0.03", "krause_decay=0,0.01"]` -> {"eval.tail_lr": [0.01, 0.03], ...}.

    Only `eval.*` fields (a bare name means the eval field): a sweep changes how the artifact is scored,
    never the model. Every value is checked by the config itself (type and range), naming the field.
    """
    if not items:
        raise ValueError("sweep needs at least one --grid FIELD=v1,v2,... (an eval.* field, e.g. eval.tail_lr=0.01,0.03)")
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        name = key[len("eval."):] if key.startswith("eval.") else key
        if not sep or not values.strip():
            raise ValueError(f"--grid {item!r} is not of the form FIELD=v1,v2,...")
        if name not in EVAL_FIELDS or ("." in key and not key.startswith("eval.")):
            raise ValueError(f"--grid {key}: unknown field: a sweep takes eval.* fields only "
                             f"(see `python -m dyneval config --profile smoke`)")
        field = f"eval.{name}"
        if field in grid:
            raise ValueError(f"--grid {field}: given twice: put all its values in one --grid")
        parsed = []
        for text in (v.strip() for v in values.split(",")):
            if not text:
                raise ValueError(f"--grid {field}: an empty value in {values!r}")
            try:
                parsed.append(getattr(cfg.with_overrides({field: text}).eval, name))
            except ValueError as e:
                raise ValueError(f"--grid {field}: {e}") from None
        grid[field] = list(dict.fromkeys(parsed))  # a repeated value is scored once
    return grid


def settings_of(grid: dict[str, list]) -> list[dict]:
    """The cartesian product of the grid, first field slowest."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def tune_tokens(cfg: RunConfig) -> tuple[torch.Tensor, dict]:
    """The tuning stream under validation's length policy, and its description."""
    pattern = data.tune_pattern(cfg.train.data_path)
    try:
        shards = data.shard_files(pattern)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{cfg.train.data_path}: no tuning stream (fineweb_tune_*.bin or {data.FINEWEB_TUNE_SHARD}): make the "
            f"embedded corpus again (`python -m dyneval data embedded`, format 3 has a tune split) or fetch "
            f"FineWeb's with `python -m dyneval data fineweb --tune`") from None
    tokens = data.load_validation_tokens(pattern, cfg.eval.eval_seq_len, cfg.eval.max_val_tokens, cfg.model.vocab_size)
    source = ("the embedded corpus's tune split (whole documents held out of train, val and the tokenizer)"
              if shards[0].name.startswith("fineweb_tune_") else
              f"FineWeb's last train shard {data.FINEWEB_TUNE_SHARD} (never read by the record's 5,604 steps)")
    desc = {"pattern": pattern, "files": [s.name for s in shards], "source": source,
            "targets": int(tokens.numel() - 1), "sha256": [files.sha256_file(s) for s in shards],
            "length_policy": f"as validation: capped at eval.max_val_tokens={cfg.eval.max_val_tokens} (0: all), "
                             f"trimmed to k*eval_seq_len+1 tokens (eval_seq_len={cfg.eval.eval_seq_len})",
            "documents": int((tokens == data.BOS_ID).sum())}
    return tokens, desc


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    import os

    info = {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class SweepScorer:
    """One variant scored on one artifact, on any stream, under any eval setting (the evaluate stage's code)."""

    def __init__(self, cfg: RunConfig, inputs: EvalInputs, quirks: Quirks):
        self.cfg, self.inputs, self.quirks = cfg, inputs, quirks

    def __call__(self, variant: str, tokens: torch.Tensor, setting: dict) -> EvalResult:
        cfg = self.cfg.with_overrides(setting) if setting else self.cfg
        v = VARIANTS[variant]
        job = job_for(v, cfg, self.inputs.on(tokens), self.quirks, default_ranks(cfg, None), {})
        res, _ = v.run(job)
        require_finite(str(self.inputs.weights.artifact), res)
        return res


def _score_entry(res: EvalResult) -> dict:
    return {"bpb": res.bpb, "loss": res.loss, "seconds": res.seconds, "tokens": res.tokens, "bytes": res.bytes}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant!r}: unknown variant: choose from {', '.join(VARIANTS)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepRequest:
    """One `python -m dyneval sweep` (or notebook 06) as asked for: a run folder, a variant, a grid."""

    run_dir: str | Path  # a finished training run: its meta.json config and its latest artifact
    variant: str  # the registry variant whose eval.* fields are tuned
    grid: list[str] | str  # `FIELD=v1,v2,...` items, or one string of them joined by `;`
    out: str | Path | None = None  # where the JSON and the figure go; default <run_dir>/sweep
    overrides: tuple[str, ...] | list[str] = ()  # eval.* `FIELD=VALUE` for every setting (`--set`)
    quirks: str = ""  # the run's quirks for its own variants, e.g. qat_on=0
    device: str | None = None  # cpu or cuda; default cuda when available
    root: str | Path | None = None  # relative data and tokenizer paths of the run's config are taken from it

    def resolve(self) -> Sweep:
        """The run's config (its meta.json, with `overrides`), its latest artifact, the grid parsed and checked;
        with `root`, relative data paths from it (a notebook's working directory is not the project's)."""
        from .config import is_run_overridable, resolve
        from .runfolder import RunFolder
        from .variants import EvalOptions, parse_quirks

        _check_variant(self.variant)
        cfg = resolve(None, run_dir=str(self.run_dir), overrides=list(self.overrides),
                      run_overridable=is_run_overridable).config
        if self.root is not None:
            cfg = cfg.with_overrides({f"train.{k}": str(Path(self.root) / getattr(cfg.train, k)) for k in
                                      ("data_path", "tokenizer_path") if not Path(getattr(cfg.train, k)).is_absolute()})
        items = self.grid
        if isinstance(items, str):
            items = [g for g in (t.strip() for t in items.split(";")) if g]
        grid = parse_grid(list(items), cfg)
        run = RunFolder(self.run_dir)
        # as evaluate: no fake quantization the run never had
        quirks = EvalOptions(quirks=parse_quirks(self.quirks), qat_flag_set=run.qat_flag_set()).quirks_in_force
        return Sweep(cfg=cfg, artifact=run.latest_artifact(), variant=self.variant, grid=grid,
                     out=Path(self.out or Path(self.run_dir) / "sweep"), quirks=quirks, device=self.device,
                     run_dir=str(self.run_dir))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sweep:
    """A sweep resolved: the artifact scored under `cfg`, the variant and its parsed grid, where results go."""

    cfg: RunConfig  # the run's config; each setting of the grid overrides its eval.* fields
    artifact: Path  # the int6 artifact every setting is scored on
    variant: str
    grid: dict[str, list]  # eval.* field -> values (`parse_grid`)
    out: Path
    quirks: Quirks = Quirks()
    device: str | None = None
    run_dir: str | None = None  # recorded in the JSON

    def __post_init__(self):
        object.__setattr__(self, "artifact", Path(self.artifact))  # a frozen dataclass: paths made Paths once
        object.__setattr__(self, "out", Path(self.out))

    @property
    def default(self) -> dict:
        """The setting the run's config holds now for the grid's fields."""
        return {f: getattr(self.cfg.eval, f.split(".", 1)[1]) for f in self.grid}


def run_sweep(request: SweepRequest, log=print) -> dict:
    """`python -m dyneval sweep` and notebook 06: the request resolved (`SweepRequest.resolve`), then swept."""
    return sweep(request.resolve(), log)


def sweep(s: Sweep, log=print) -> dict:
    """Score every setting of the grid for the variant on the tuning stream, choose the lowest bpb, then score
    the choice, the config's default and sliding once each on validation. Writes the JSON and the figure."""
    _check_variant(s.variant)
    if not s.artifact.is_file():
        raise FileNotFoundError(f"{s.artifact}: no artifact: train and export the run first (or give its run folder)")
    ctx = dist_utils.init_context(s.device)
    if ctx.is_main:
        files.output_folder(s.out)
    inputs = evaluation_inputs(s.cfg, s.artifact, ctx.device)
    val = inputs.tokens
    tune, tune_desc = tune_tokens(s.cfg)
    tune = tune.to(ctx.device)
    score = SweepScorer(s.cfg, inputs, s.quirks)
    report = _report_head(s, inputs.weights.sha256, tune_desc, int(val.numel() - 1), machine(ctx.device))
    json_path = s.out / f"sweep_{s.variant}.json"
    t0 = time.perf_counter()
    report["sliding_tune"] = _score_entry(score("sliding", tune, {}))
    settings = settings_of(s.grid)
    for i, setting in enumerate(settings):
        try:
            entry = {"setting": setting, **_score_entry(score(s.variant, tune, setting))}
        except (adapt.DivergedError, ValueError) as e:  # a rate too large diverges: recorded, never chosen
            entry = {"setting": setting, "bpb": None, "error": str(e).splitlines()[0]}
        report["tuning"].append(entry)
        if ctx.is_main:
            files.write_json(json_path, report)  # nothing scored is lost
        log(f"[{i + 1}/{len(settings)}] tune {_label(setting)}: "
            + (f"bpb {entry['bpb']:.5f}" if entry["bpb"] is not None else f"failed ({entry['error']})"))
    scored = [e for e in report["tuning"] if e["bpb"] is not None and math.isfinite(e["bpb"])]
    if not scored:
        raise ValueError(f"{s.variant}: every setting of the grid failed on the tuning stream: try smaller rates")
    best = min(scored, key=lambda e: e["bpb"])
    report["choice"] = {"setting": best["setting"], "tune_bpb": best["bpb"]}
    report["validation"] = _validate(score, s, val, best["setting"])
    report["seconds"] = time.perf_counter() - t0
    if ctx.is_main:
        files.write_json(json_path, report)
        report["figure"] = [str(p) for p in figure(report, s.out)]
        files.write_json(json_path, report)
        v = report["validation"]
        log(f"{s.variant}: chose {_label(best['setting'])} (tune bpb {best['bpb']:.5f}); validation bpb "
            f"{v['choice']['bpb']:.5f} (default {_label(s.default)}: {v['default']['bpb']:.5f}, sliding "
            f"{v['sliding']['bpb']:.5f}) -> {json_path}")
    return report


def _report_head(s: Sweep, artifact_sha256: str, tune_desc: dict, val_targets: int, machine_info: dict) -> dict:
    """The sweep JSON before anything is scored: what is swept, on which streams, how, on which machine."""
    return {"variant": s.variant, "run_dir": str(s.run_dir) if s.run_dir else None, "artifact": str(s.artifact),
            "artifact_sha256": artifact_sha256, "grid": s.grid, "default": s.default, "tune_stream": tune_desc,
            "validation_stream": {"pattern": data.val_pattern(s.cfg.train.data_path), "targets": val_targets},
            "how": "every setting scored on the tuning stream; the lowest tuning bpb chosen; validation scored "
                   "only afterwards, once for the choice, once for the default (the run's config) and once "
                   "for sliding; validation never chose anything",
            "machine": machine_info, "tuning": [], "sliding_tune": None}


def _validate(score: SweepScorer, s: Sweep, val: torch.Tensor, choice: dict) -> dict:
    """Validation, scored only after the choice: the choice, the default (once, when it is not the choice), sliding."""
    val_choice = _score_entry(score(s.variant, val, choice))
    val_default = val_choice if choice == s.default else _score_entry(score(s.variant, val, s.default))
    val_sliding = _score_entry(score("sliding", val, {}))
    return {"choice": val_choice, "default": val_default, "sliding": val_sliding,
            "choice_is_default": choice == s.default,
            "delta_vs_sliding": {"choice": val_choice["bpb"] - val_sliding["bpb"],
                                 "default": val_default["bpb"] - val_sliding["bpb"]}}


def _label(setting: dict) -> str:
    return ", ".join(f"{k.split('.', 1)[1]}={v:g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                     for k, v in setting.items())


def figure_data(report: dict) -> dict:
    """What `figures.plot_sweep` draws from a sweep's report: each scored setting's tuning Δ bpb vs sliding,
    the choice, and the title and note that carry the validation scores and the fields held fixed."""
    base, v = report["sliding_tune"]["bpb"], report["validation"]
    choice = report["choice"]["setting"]
    fields = list(report["grid"])
    title = (f"{report['variant']}: tuned on {report['tune_stream']['targets']:,} held-out tokens\n"
             f"validation bpb {v['choice']['bpb']:.5f} (Δ {v['delta_vs_sliding']['choice']:+.5f}); "
             f"default {v['default']['bpb']:.5f} (Δ {v['delta_vs_sliding']['default']:+.5f})")
    note = "other fields at the choice: " + _label({f: choice[f] for f in fields[2:]}) if len(fields) > 2 else ""
    return {"grid": report["grid"], "choice": choice, "title": title, "note": note,
            "deltas": [(e["setting"], e["bpb"] - base) for e in report["tuning"] if e["bpb"] is not None]}


def figure(report: dict, out: Path) -> list[Path]:
    """`sweep_<variant>.png/.svg` in `out`: `figures.plot_sweep` of the report (a heatmap over the first two
    fields, a line over a one-field grid), in the sweep figure's style, outside pyplot (no backend switched)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(figures.SWEEP_STYLE):
        fig = Figure(figsize=(5.6, 4.0))
        figures.plot_sweep(fig.subplots(), **figure_data(report))
        fig.tight_layout()
        return figures.save(fig, out, f"sweep_{report['variant']}")


def summary_markdown(report: dict) -> str:
    """The sweep as Markdown: every setting's tuning score, the choice, and the three validation scores."""
    fields = list(report["grid"])
    base = report["sliding_tune"]["bpb"]
    lines = [f"| {' | '.join(f.split('.', 1)[1] for f in fields)} | tuning bpb | Δ vs sliding (tuning) |",
             "|" + "---|" * (len(fields) + 2)]
    for e in report["tuning"]:
        cells = [f"{e['setting'][f]:g}" if isinstance(e["setting"][f], float) else str(e["setting"][f]) for f in fields]
        mark = " **(choice)**" if e["setting"] == report["choice"]["setting"] else ""
        score = f"{e['bpb']:.5f}{mark} | {e['bpb'] - base:+.5f}" if e["bpb"] is not None else f"failed | {e['error']}"
        lines.append(f"| {' | '.join(cells)} | {score} |")
    v = report["validation"]
    lines += ["", f"Validation (scored after the choice, never used for it): **{report['variant']}** with "
              f"{_label(report['choice']['setting'])}: {v['choice']['bpb']:.5f} bpb (Δ vs sliding "
              f"{v['delta_vs_sliding']['choice']:+.5f}); with the run's default {_label(report['default'])}: "
              f"{v['default']['bpb']:.5f} (Δ {v['delta_vs_sliding']['default']:+.5f}); sliding {v['sliding']['bpb']:.5f}. "
              f"Tuning stream: {report['tune_stream']['targets']:,} targets of {', '.join(report['tune_stream']['files'])}."]
    return "\n".join(lines)
