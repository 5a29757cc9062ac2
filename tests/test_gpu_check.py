"""scripts/gpu_check.sh, the one prepared GPU run: its dry run, and its plumbing with stand-in commands."""

import json
import os
import shlex
import subprocess

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _dry_run(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=REPO, timeout=30,
                       env={**os.environ, "OUT": str(tmp_path / "out")})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_dry_run_prints_each_step_with_its_budget_within_ten_minutes_and_runs_nothing(tmp_path):
    out = _dry_run(tmp_path)
    budgets = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line[:1].isalpha()
               and not line.startswith("total")}
    assert list(budgets) == ["setup", "cuda_tests", "gpu_path", "reproduce", "bench"]
    assert sum(budgets.values()) <= 590 and f"total budget {sum(budgets.values())} s" in out
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_every_dyneval_command_of_the_gpu_check_parses_with_this_cli(tmp_path):
    from dyneval.__main__ import build_parser
    commands = [shlex.split(line.strip()[2:]) for line in _dry_run(tmp_path).splitlines()
                if line.strip().startswith("$ python3 -m dyneval")]
    assert len(commands) == 2
    parsed = [build_parser().parse_args(c[3:]) for c in commands]
    assert parsed[0].command == "reproduce" and parsed[0].profile == "gpu_smoke" and parsed[0].seeds == [42]
    assert parsed[1].command == "bench" and parsed[1].what == "compare" and parsed[1].profile == "gpu_smoke"
    assert parsed[1].checkpoint_run == parsed[0].out + "/seed42"  # the benchmark scores step 2's checkpoint


STUB = """#!/usr/bin/env bash
echo "stub $0 $*"
case "$*" in
  *reproduce*) mkdir -p "$WORK/figures" "$WORK/runs/seed42/notebooks"; echo '| variant |' > "$WORK/figures/ablation.md"
               echo '{}' > "$WORK/runs/seed42/meta.json"; echo nb > "$WORK/runs/seed42/notebooks/02_train.ipynb" ;;
  *"bench compare"*) echo 'train tokens/s: 1.20x'; echo '{"bench": "compare"}' ;;
  *-c*) echo 'torch 0 cuda 0' ;;
esac
"""


def test_with_stand_in_commands_each_step_leaves_its_results_in_at_most_eight_files(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "nvidia-smi"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == sorted(["summary.txt", "cuda_tests.log", "gpu_path.log", "reproduce.log", "ablation.md",
                            "reproduce.tar.gz", "bench.log", "bench.json"]) and len(files) <= 8
    summary = (out / "summary.txt").read_text()
    for step in ("setup", "cuda_tests", "gpu_path", "reproduce", "bench"):
        assert f"{step}: exit 0" in summary
    assert json.loads((out / "bench.json").read_text()) == {"bench": "compare"}
    assert "--checkpoint-run " + str(work / "runs" / "seed42") in (out / "bench.log").read_text()
    import tarfile
    with tarfile.open(out / "reproduce.tar.gz") as t:
        assert "runs/seed42/notebooks/02_train.ipynb" in t.getnames() and "figures/ablation.md" in t.getnames()
