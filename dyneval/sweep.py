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
heatmap `sweep_<variant>.png`/`.svg` (a line plot for a one-field grid).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import platform
import time
from pathlib import Path

import torch

from . import adapt, data, distributed as dist_utils, files
from .adapt import Quirks
from .config import EvalConfig, RunConfig
from .evaluate import EvalResult, require_finite
from .model import configure_backends
from .variants import VARIANTS, default_ranks, evaluation_inputs, job_for

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


class Scorer:
    """One variant scored on one artifact, on any stream, under any eval setting (the evaluate stage's code)."""

    def __init__(self, cfg: RunConfig, ck, lut, quirks: Quirks, backends: dict):
        self.cfg, self.ck, self.lut, self.quirks, self.backends = cfg, ck, lut, quirks, backends

    def __call__(self, variant: str, tokens: torch.Tensor, setting: dict) -> EvalResult:
        cfg = self.cfg.with_overrides(setting) if setting else self.cfg
        v = VARIANTS[variant]
        job = job_for(v, cfg, self.ck, tokens, self.lut, self.quirks, default_ranks(cfg, None), self.backends, {})
        res, _ = v.run(job)
        require_finite(str(self.ck.artifact), res)
        return res


def _score_entry(res: EvalResult) -> dict:
    return {"bpb": res.bpb, "loss": res.loss, "seconds": res.seconds, "tokens": res.tokens, "bytes": res.bytes}


def sweep(cfg: RunConfig, artifact: Path, variant: str, grid: dict[str, list], out: Path,
          quirks: Quirks = Quirks(), device: str | None = None, run_dir: str | None = None, log=print) -> dict:
    """Score every setting of `grid` for `variant` on the tuning stream, choose the lowest bpb, then score the
    choice, the config's default and sliding once each on validation. Writes the JSON and the figure into `out`."""
    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant!r}: unknown variant: choose from {', '.join(VARIANTS)}")
    artifact = Path(artifact)
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact}: no artifact: train and export the run first (or give its run folder)")
    out = Path(out)
    ctx = dist_utils.init_context(device)
    if ctx.is_main:
        files.output_folder(out)
    backends = configure_backends(cfg, ctx.device)
    lut, val, ck = evaluation_inputs(cfg, artifact, ctx.device)
    tune, tune_desc = tune_tokens(cfg)
    tune = tune.to(ctx.device)
    score = Scorer(cfg, ck, lut, quirks, backends)
    default = {f: getattr(cfg.eval, f.split(".", 1)[1]) for f in grid}
    report = {"variant": variant, "run_dir": str(run_dir) if run_dir else None, "artifact": str(artifact),
              "artifact_sha256": ck.sha256, "grid": grid, "default": default, "tune_stream": tune_desc,
              "validation_stream": {"pattern": data.val_pattern(cfg.train.data_path), "targets": int(val.numel() - 1)},
              "how": "every setting scored on the tuning stream; the lowest tuning bpb chosen; validation scored "
                     "only afterwards, once for the choice, once for the default (the run's config) and once "
                     "for sliding; validation never chose anything",
              "machine": machine(ctx.device), "tuning": [], "sliding_tune": None}
    json_path = out / f"sweep_{variant}.json"
    t0 = time.perf_counter()
    report["sliding_tune"] = _score_entry(score("sliding", tune, {}))
    for i, setting in enumerate(settings_of(grid)):
        try:
            entry = {"setting": setting, **_score_entry(score(variant, tune, setting))}
        except (adapt.DivergedError, ValueError) as e:  # a rate too large diverges: recorded, never chosen
            entry = {"setting": setting, "bpb": None, "error": str(e).splitlines()[0]}
        report["tuning"].append(entry)
        if ctx.is_main:
            files.write_json(json_path, report)  # nothing scored is lost
        log(f"[{i + 1}/{len(settings_of(grid))}] tune {_label(setting)}: "
            + (f"bpb {entry['bpb']:.5f}" if entry["bpb"] is not None else f"failed ({entry['error']})"))
    scored = [e for e in report["tuning"] if e["bpb"] is not None and math.isfinite(e["bpb"])]
    if not scored:
        raise ValueError(f"{variant}: every setting of the grid failed on the tuning stream: try smaller rates")
    best = min(scored, key=lambda e: e["bpb"])
    report["choice"] = {"setting": best["setting"], "tune_bpb": best["bpb"]}
    val_choice = _score_entry(score(variant, val, best["setting"]))
    val_default = val_choice if best["setting"] == default else _score_entry(score(variant, val, default))
    val_sliding = _score_entry(score("sliding", val, {}))
    report["validation"] = {
        "choice": val_choice, "default": val_default, "sliding": val_sliding,
        "choice_is_default": best["setting"] == default,
        "delta_vs_sliding": {"choice": val_choice["bpb"] - val_sliding["bpb"],
                             "default": val_default["bpb"] - val_sliding["bpb"]}}
    report["seconds"] = time.perf_counter() - t0
    if ctx.is_main:
        files.write_json(json_path, report)
        report["figure"] = [str(p) for p in figure(report, out)]
        files.write_json(json_path, report)
        log(f"{variant}: chose {_label(best['setting'])} (tune bpb {best['bpb']:.5f}); validation bpb "
            f"{val_choice['bpb']:.5f} (default {_label(default)}: {val_default['bpb']:.5f}, sliding "
            f"{val_sliding['bpb']:.5f}) -> {json_path}")
    return report


def run_sweep(run_dir: str | Path, variant: str, grid_items: list[str] | str, out: str | Path | None = None,
              overrides: list[str] = (), quirks: str = "", device: str | None = None, root: str | Path | None = None,
              log=print) -> dict:
    """`python -m dyneval sweep` (and notebook 06): a run folder's config (its meta.json, with `overrides` of
    eval.* fields), its latest artifact, the grid from `FIELD=v1,v2` items (or one string of them joined
    by `;`), into `out` (default `<run_dir>/sweep`). With `root`, relative data and tokenizer paths of the
    run's config are taken from it (a notebook's working directory is not the project's)."""
    from .config import is_run_overridable, resolve
    from .runfolder import RunFolder
    from .variants import parse_quirks

    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant!r}: unknown variant: choose from {', '.join(VARIANTS)}")
    cfg = resolve(None, run_dir=str(run_dir), overrides=list(overrides), run_overridable=is_run_overridable).config
    if root is not None:
        cfg = cfg.with_overrides({f"train.{k}": str(Path(root) / getattr(cfg.train, k))
                                  for k in ("data_path", "tokenizer_path") if not Path(getattr(cfg.train, k)).is_absolute()})
    if isinstance(grid_items, str):
        grid_items = [g for g in (t.strip() for t in grid_items.split(";")) if g]
    grid = parse_grid(grid_items, cfg)
    q = parse_quirks(quirks)
    run = RunFolder(run_dir)
    if not run.qat_flag_set():
        q = dataclasses.replace(q, qat_on=False)  # as evaluate: no fake quantization the run never had
    return sweep(cfg, run.latest_artifact(), variant, grid, Path(out or Path(run_dir) / "sweep"), q, device,
                 str(run_dir), log)


def _label(setting: dict) -> str:
    return ", ".join(f"{k.split('.', 1)[1]}={v:g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                     for k, v in setting.items())


def _matrix(report: dict, fields: list[str]):
    import numpy as np

    rows, cols = report["grid"][fields[0]], report["grid"][fields[1]]
    m = np.full((len(rows), len(cols)), np.nan)
    for e in report["tuning"]:
        s = e["setting"]
        if e["bpb"] is not None and all(s[f] == report["choice"]["setting"][f] for f in fields[2:]):
            m[rows.index(s[fields[0]]), cols.index(s[fields[1]])] = e["bpb"] - report["sliding_tune"]["bpb"]
    return rows, cols, m


def figure(report: dict, out: Path) -> list[Path]:
    """Tuning Δ bpb vs sliding: a heatmap over the first two fields (the others at the choice), or a
    line over a one-field grid; the choice marked; validation numbers in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "dyneval", "font.size": 9})
    fields = list(report["grid"])
    choice = report["choice"]["setting"]
    v = report["validation"]
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    if len(fields) == 1:
        f = fields[0]
        pts = [(e["setting"][f], e["bpb"] - report["sliding_tune"]["bpb"]) for e in report["tuning"] if e["bpb"] is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
        xs = [x for x, _ in pts] if numeric else list(range(len(pts)))
        ax.plot(xs, [d for _, d in pts], "o-", color="C0")
        ax.plot([xs[[x for x, _ in pts].index(choice[f])]], [report["choice"]["tune_bpb"] - report["sliding_tune"]["bpb"]],
                "*", ms=14, color="C3", label="choice (lowest tuning bpb)")
        if numeric and all(x > 0 for x in xs) and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(xs, [str(x) for x, _ in pts])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(f)
        ax.set_ylabel("Δ bpb vs sliding, tuning stream")
        ax.legend(fontsize=7)
    else:
        rows, cols, m = _matrix(report, fields)
        lim = max(abs(float(x)) for x in m.flatten() if x == x) if (m == m).any() else 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        fig.colorbar(im, ax=ax, label="Δ bpb vs sliding, tuning stream")
        ax.set_xticks(range(len(cols)), [f"{c:g}" if isinstance(c, float) else str(c) for c in cols])
        ax.set_yticks(range(len(rows)), [f"{r:g}" if isinstance(r, float) else str(r) for r in rows])
        ax.set_xlabel(fields[1])
        ax.set_ylabel(fields[0])
        for i in range(len(rows)):
            for j in range(len(cols)):
                dark = m[i, j] == m[i, j] and abs(m[i, j]) > 0.6 * lim
                ax.text(j, i, "diverged" if m[i, j] != m[i, j] else f"{m[i, j]:+.4f}", ha="center", va="center",
                        fontsize=7, color="w" if dark else "k")
        ax.plot(cols.index(choice[fields[1]]), rows.index(choice[fields[0]]), "s", ms=26, mfc="none", mec="C1", mew=2.5)
        if len(fields) > 2:
            ax.text(0, -0.18, "other fields at the choice: " + _label({f: choice[f] for f in fields[2:]}),
                    transform=ax.transAxes, fontsize=7)
    ax.set_title(f"{report['variant']}: tuned on {report['tune_stream']['targets']:,} held-out tokens\n"
                 f"validation bpb {v['choice']['bpb']:.5f} (Δ {v['delta_vs_sliding']['choice']:+.5f}); "
                 f"default {v['default']['bpb']:.5f} (Δ {v['delta_vs_sliding']['default']:+.5f})", fontsize=8)
    fig.tight_layout()
    name = f"sweep_{report['variant']}"
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p, meta in zip(paths, [{"Software": None}, {"Date": None, "Creator": None}]):
        with files.atomic_open(p) as fh:
            fig.savefig(fh, format=p.suffix[1:], metadata=meta)
    plt.close(fig)
    return paths


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
