"""Reproduction runner: notebooks 01-04 per seed through papermill, then 05 over all seeds.

Owns `python -m dyneval reproduce --profile P --seeds 42 7 2024 [--out DIR]`. Each seed runs in
`<out>/seed<N>/` with its executed notebooks kept under `notebooks/`; a seed whose results are complete
is skipped on a second call only when its config and artifact are the ones asked for (otherwise it is
refused, or run again from scratch with `--fresh`); one reproduction at a time per folder (a lock); a failing seed is recorded in `FAILED.json` (with the notebook's error)
and the others go on; the report (05) then shows the failure. Progress is plain text, one line per
event, readable in a terminal, a log file, papermill's output and JupyterLab alike.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import files
from .files import read_json, sha256_file
from .runfolder import RunFolder

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SEED_NOTEBOOKS = ("01_data", "02_train", "03_quantize", "04_evaluate")


def seed_complete(seed_dir: Path) -> bool:
    """A seed is done when its results hold a finite bpb for every variant."""
    import math

    from .variants import VARIANTS

    run = RunFolder(seed_dir)
    if not run.results.is_file() or not run.finished:
        return False
    r = read_json(run.results)  # a truncated results.json is a one-line error naming it
    return all(v in r and math.isfinite(r[v].get("bpb", float("nan"))) for v in VARIANTS)


def seed_differs(seed_dir: Path, cfg) -> str | None:
    """Why a complete seed is not the run asked for (config, artifact hash, results' artifact), or None."""
    run = RunFolder(seed_dir)
    meta = run.read_meta()
    want, have = json.loads(json.dumps(cfg.to_dict())), meta.get("config", {})
    changed = [f"{s}.{k}: {have.get(s, {}).get(k)!r} -> {v!r}" for s, sec in want.items() if isinstance(sec, dict)
               for k, v in sec.items() if have.get(s, {}).get(k) != v]
    if changed or want.get("nproc") != have.get("nproc"):
        return f"its config differs ({'; '.join(changed[:3]) or 'nproc'})"
    artifact = run.latest_artifact()
    sha = meta.get("artifact_sha256") or meta.get("export", {}).get("artifact_sha256")
    if not sha:
        return "its meta.json records no artifact hash to check the artifact against (an older run)"
    if not artifact.is_file() or sha != sha256_file(artifact):
        return "its artifact is not the one its meta.json records (artifact_sha256)"
    results = read_json(run.results)
    other = sorted(v for v, r in results.items() if Path(r.get("artifact", "")).resolve() != artifact.resolve()
                   or r.get("artifact_sha256", sha) != sha)
    if other:
        return f"its results of {', '.join(other[:3])} score another artifact"
    return None


class CellOutput:
    """A file-like sink for what a notebook's cells print (papermill's `stdout_file`), passed on to `log`
    line by line as the cells run, indented under the notebook's name: the training and evaluation logs
    reach reproduce's output as they reach the cells."""

    def __init__(self, log, indent: str = "    "):
        self.log, self.indent, self.partial = log, indent, ""

    def write(self, text: str) -> int:
        *done, self.partial = (self.partial + text).split("\n")
        for line in done:
            self.log(self.indent + line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.partial:
            self.log(self.indent + self.partial)
            self.partial = ""


def run_notebook(name: str, out_dir: Path, params: dict, timeout: int, log) -> None:
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"  {name} ...")
    cells = CellOutput(log)
    try:
        papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), parameters=params,
                                   kernel_name="python3", cwd=str(Path.cwd()), progress_bar=False, log_output=False,
                                   stdout_file=cells, stderr_file=cells, execution_timeout=timeout,
                                   request_save_on_cell_execute=True)
    finally:
        cells.close()
    log(f"  {name} done in {time.perf_counter() - t0:.0f} s")


def _error_line(e: Exception) -> str:
    name = getattr(e, "ename", type(e).__name__)
    value = str(getattr(e, "evalue", e)).strip().splitlines()
    return f"{name}: {value[0] if value else ''}"[:500]


def reproduce(asked: Reproduction, log=None) -> dict:
    """Run every seed (skipping identical complete ones, recording failures), then the report; return a summary.

    A complete seed whose config or artifact differs from the one asked for is refused, or, with
    `asked.fresh`, deleted and run again. Tables and figures go to `asked.figures`, by default
    `<out>/figures` (the README's first command names the project's `figures/` explicitly).
    """
    from . import config

    log = log or (lambda line: print(line, flush=True))  # flushed: a pipe or a log file sees each line as it comes
    config.preset(asked.profile)  # an unknown profile fails here, before any notebook starts
    check_seeds(asked.seeds, asked.overrides, asked.seed_overrides)
    r = asked.resolved()
    with files.lock_folder(r.out):
        files.write_json(r.out / "reproduce.json", {"profile": r.profile, "seeds": r.seeds, "overrides": r.overrides,
                                                     "seed_overrides": {str(k): v for k, v in r.seed_overrides.items()}})
        return _reproduce(r, log)


def check_seeds(seeds: list[int], overrides=(), seed_overrides: dict | None = None) -> None:
    """Seeds come from `--seeds` only: distinct, non-negative, and never overridden by `--set train.seed`
    (applied after each seed's own, it would train the same model under every seed's name)."""
    from .config import _locate, _split

    bad = [s for s in seeds if s < 0]
    if bad:
        raise ValueError(f"--seeds {bad[0]}: a seed is a non-negative integer")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds names seed {twice[0]} twice: a seed is one run")
    items = [("--set", o) for o in overrides] + [(f"--seed-set {s}:", o) for s, over in (seed_overrides or {}).items()
                                                 for o in over]
    for opt, item in items:
        if _locate(_split(item)[0]) == ("train", "seed"):
            raise ValueError(f"{opt} {item}: the seed of each run comes from --seeds (train.seed=N under --set would "
                             f"train the same model for every seed): use --seeds N")


@dataclass(frozen=True, kw_only=True)
class Reproduction:
    """What one reproduction is asked for: `python -m dyneval reproduce`'s options (or a test's)."""

    profile: str  # the config preset every seed starts from: smoke, gpu_smoke, record_1gpu, record
    seeds: list[int]  # one run each, in <out>/seed<N>; distinct and non-negative (`check_seeds`)
    out: str | Path  # the reproduction folder (locked while it runs)
    overrides: list[str] = field(default_factory=list)  # FIELD=VALUE for every seed (`--set`)
    seed_overrides: dict[int, list[str]] = field(default_factory=dict)  # FIELD=VALUE for one seed (`--seed-set`)
    figures: str | Path | None = None  # where the report writes tables and figures; default <out>/figures
    timeout: int = 3600  # seconds per notebook
    data_root: str = "data"  # datasets/ and tokenizers/ live under it
    fresh: bool = False  # run a complete seed whose config or artifact differs again from scratch (else refuse)

    def resolved(self) -> Reproduction:
        """The same request with absolute paths (the notebooks run with another working directory) and the
        default figures folder filled in."""
        out = Path(self.out).resolve()
        return replace(self, seeds=list(self.seeds), out=out, overrides=list(self.overrides),
                       seed_overrides=dict(self.seed_overrides),
                       figures=Path(self.figures).resolve() if self.figures else out / "figures",
                       data_root=str(Path(self.data_root).resolve()))

    def overrides_of(self, seed: int) -> list[str]:
        return list(self.overrides) + list(self.seed_overrides.get(seed, []))

    def seed_dir(self, seed: int) -> Path:
        return Path(self.out) / f"seed{seed}"


def _reproduce(r: Reproduction, log) -> dict:
    stale = _stale_seeds(r)  # decided before running anything
    summary = {"done": [], "skipped": [], "failed": {}}
    seed_seconds: list[float] = []  # for the estimate of the time left, printed after each seed
    t_all = time.perf_counter()
    for i, seed in enumerate(r.seeds, 1):
        seconds = _run_seed(r, seed, stale, summary, log)
        if seconds is None:
            continue
        seed_seconds.append(seconds)
        left = sum(1 for s in r.seeds[i:] if not seed_complete(r.seed_dir(s)) or s in stale)
        eta = f"; about {left * sum(seed_seconds) / len(seed_seconds) / 60:.0f} min for the {left} left" if left else ""
        log(f"[{i}/{len(r.seeds)}] seed {seed} done in {seed_seconds[-1]:.0f} s{eta}")
    log("report ...")
    try:
        run_notebook("05_report", r.out / "notebooks", {"runs_root": str(r.out), "figures_dir": str(r.figures)},
                     r.timeout, log)
    except Exception as e:  # e.g. seeds that may not be averaged: the report's own one line
        raise ValueError(f"report: {_error_line(e)} (notebook {r.out / 'notebooks' / '05_report.ipynb'})") from None
    summary["seconds"] = time.perf_counter() - t_all
    log(f"reproduce: {len(summary['done'])} run, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed "
          f"in {summary['seconds']:.0f} s; tables and figures in {r.figures}")
    return summary


def _stale_seeds(r: Reproduction) -> dict[int, str]:
    """Complete seeds that are not the run asked for, and why; refused unless `fresh`."""
    from .notebook import make_config

    stale = {}
    for seed in r.seeds:
        seed_dir = r.seed_dir(seed)
        why = seed_complete(seed_dir) and seed_differs(seed_dir, make_config(r.profile, seed,
                                                                             ", ".join(r.overrides_of(seed)),
                                                                             r.data_root))
        if why and not r.fresh:
            raise ValueError(f"seed {seed}: {seed_dir} holds a complete run, but {why}: pass --fresh to delete it "
                             f"and run it again, or choose another --out")
        if why:
            stale[seed] = why
    return stale


def _run_seed(r: Reproduction, seed: int, stale: dict, summary: dict, log) -> float | None:
    """Seed `seed`'s notebooks 01-04 into its folder; its seconds, or None when skipped or failed (recorded)."""
    import shutil

    seed_dir, i, n = r.seed_dir(seed), r.seeds.index(seed) + 1, len(r.seeds)  # seeds are distinct (check_seeds)
    if seed in stale:
        log(f"[{i}/{n}] seed {seed}: {stale[seed]}: --fresh: deleting {seed_dir} and running it again")
        shutil.rmtree(seed_dir)
    elif seed_complete(seed_dir):
        log(f"[{i}/{n}] seed {seed}: complete, skipped")
        summary["skipped"].append(seed)
        return None
    failed = RunFolder(seed_dir).failed
    if failed.is_file():
        failed.unlink()
    over = r.overrides_of(seed)
    params = {"profile": r.profile, "seed": seed, "run_dir": str(seed_dir), "overrides": ", ".join(over),
              "data_root": r.data_root}
    log(f"[{i}/{n}] seed {seed} -> {seed_dir}")
    t0 = time.perf_counter()
    try:
        for name in SEED_NOTEBOOKS:
            run_notebook(name, seed_dir / "notebooks", params, r.timeout, log)
    except Exception as e:  # a failed seed must not sink the others
        seed_dir.mkdir(parents=True, exist_ok=True)
        err = _error_line(e)
        files.write_json(failed, {"seed": seed, "error": err, "overrides": over,
                                  "traceback": traceback.format_exc()[-4000:]}, indent=1)
        summary["failed"][seed] = err
        log(f"[{i}/{n}] seed {seed} FAILED: {err}")
        return None
    summary["done"].append(seed)
    return time.perf_counter() - t0


def parse_seed_sets(items: list[str] | None) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for item in items or []:
        seed, sep, rest = item.partition(":")
        if not sep or not seed.strip().isdigit() or "=" not in rest:
            raise ValueError(f"--seed-set {item!r}: expected SEED:FIELD=VALUE")
        out.setdefault(int(seed), []).append(rest.strip())
    return out
