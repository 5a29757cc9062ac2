"""Reproduction runner: notebooks 01-04 per seed through papermill, then 05 over all seeds.

Owns `python -m dyneval reproduce --profile P --seeds 42 7 2024 [--out DIR]`. Each seed runs in
`<out>/seed<N>/` with its executed notebooks kept under `notebooks/`; a seed whose results are complete
is skipped on a second call; a failing seed is recorded in `FAILED.json` (with the notebook's error)
and the others go on; the report (05) then shows the failure. Progress is plain text, one line per
event, readable in a terminal, a log file, papermill's output and JupyterLab alike.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from . import files

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SEED_NOTEBOOKS = ("01_data", "02_train", "03_quantize", "04_evaluate")


def seed_complete(seed_dir: Path) -> bool:
    """A seed is done when its results hold a finite bpb for every variant."""
    import math

    from .variants import VARIANTS

    res = seed_dir / "eval" / "results.json"
    if not res.is_file() or not (seed_dir / "meta.json").is_file():
        return False
    r = json.loads(res.read_text())
    return all(v in r and math.isfinite(r[v].get("bpb", float("nan"))) for v in VARIANTS)


def run_notebook(name: str, out_dir: Path, params: dict, timeout: int, log) -> None:
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"  {name} ...")
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), parameters=params,
                               kernel_name="python3", cwd=str(Path.cwd()), progress_bar=False, log_output=False,
                               execution_timeout=timeout, request_save_on_cell_execute=True)
    log(f"  {name} done in {time.perf_counter() - t0:.0f} s")


def _error_line(e: Exception) -> str:
    name = getattr(e, "ename", type(e).__name__)
    value = str(getattr(e, "evalue", e)).strip().splitlines()
    return f"{name}: {value[0] if value else ''}"[:500]


def reproduce(profile: str, seeds: list[int], out: str | Path, overrides: list[str] = (),
              seed_overrides: dict[int, list[str]] | None = None, figures: str | Path = "figures",
              timeout: int = 3600, data_root: str = "data", log=print) -> dict:
    """Run every seed (skipping complete ones, recording failures), then the report; return a summary."""
    from . import config

    config.preset(profile)  # an unknown profile fails here, before any notebook starts
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"done": [], "skipped": [], "failed": {}}
    t_all = time.perf_counter()
    for i, seed in enumerate(seeds, 1):
        seed_dir = out / f"seed{seed}"
        if seed_complete(seed_dir):
            log(f"[{i}/{len(seeds)}] seed {seed}: complete, skipped")
            summary["skipped"].append(seed)
            continue
        failed = seed_dir / "FAILED.json"
        if failed.is_file():
            failed.unlink()
        over = list(overrides) + list((seed_overrides or {}).get(seed, []))
        params = {"profile": profile, "seed": seed, "run_dir": str(seed_dir), "overrides": ", ".join(over),
                  "data_root": str(Path(data_root).resolve())}
        log(f"[{i}/{len(seeds)}] seed {seed} -> {seed_dir}")
        t0 = time.perf_counter()
        try:
            for name in SEED_NOTEBOOKS:
                run_notebook(name, seed_dir / "notebooks", params, timeout, log)
        except Exception as e:  # a failed seed must not sink the others
            seed_dir.mkdir(parents=True, exist_ok=True)
            err = _error_line(e)
            files.write_json(failed, {"seed": seed, "error": err, "overrides": over,
                                      "traceback": traceback.format_exc()[-4000:]}, indent=1)
            summary["failed"][seed] = err
            log(f"[{i}/{len(seeds)}] seed {seed} FAILED: {err}")
            continue
        summary["done"].append(seed)
        log(f"[{i}/{len(seeds)}] seed {seed} done in {time.perf_counter() - t0:.0f} s")
    log("report ...")
    run_notebook("05_report", out / "notebooks", {"runs_root": str(out), "figures_dir": str(Path(figures).resolve())},
                 timeout, log)
    summary["seconds"] = time.perf_counter() - t_all
    log(f"reproduce: {len(summary['done'])} run, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed "
        f"in {summary['seconds']:.0f} s; tables and figures in {figures}")
    return summary


def parse_seed_sets(items: list[str] | None) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for item in items or []:
        seed, sep, rest = item.partition(":")
        if not sep or not seed.strip().isdigit() or "=" not in rest:
            raise ValueError(f"--seed-set {item!r}: expected SEED:FIELD=VALUE")
        out.setdefault(int(seed), []).append(rest.strip())
    return out


def main(args) -> int:
    out = args.out if args.out != "runs/reproduce" else f"runs/reproduce/{args.profile}"
    s = reproduce(args.profile, args.seeds, out, args.set or [], parse_seed_sets(args.seed_set), args.figures,
                  args.timeout, args.data_root)
    return 0 if not s["failed"] else 3
