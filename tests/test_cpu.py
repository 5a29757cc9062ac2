"""OpenMP's wait policy follows the machine's load when a stage starts; the thread count never does."""

import os
import subprocess
import sys
import textwrap

import pytest

from dyneval import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def choose(env, load, modules=()):
    return cpu.choose_wait_policy(env, load=lambda: load, modules=modules)["omp_wait_policy"]


def test_busy_machine_sleeps_quiet_machine_spins_user_choice_wins():
    env = {}
    assert choose(env, 1.0) == "PASSIVE" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {}
    assert choose(env, 0.6) == "default" and "OMP_WAIT_POLICY" not in env  # light load: spinning is still faster
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert cpu.choose_wait_policy(env, load=lambda: 2.0) == {"omp_wait_policy": "ACTIVE", "why": "set by the user"}
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    assert choose({}, None) == "default"  # load unknown (no /proc/stat): as before
    env = {}
    assert choose(env, 2.0, modules={"torch"}) == "default" and not env  # too late: OpenMP has started


def test_proc_stat_is_read_over_the_affinity_cpus_only(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 80 0 0 0 0 0 0\n"
                    "cpu0 5 0 5 40 0 0 0 0 0 0\n"
                    "cpu1 5 0 5 40 0 0 0 0 0 0\n"
                    "cpu7 100 0 0 0 0 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    assert cpu._cpu_times({0, 1}, str(stat)) == (20, 100)  # busy = all but idle and iowait
    assert cpu._cpu_times({3}, str(stat)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_stage_started_beside_a_busy_process_sleeps_between_parallel_regions():
    """A real busy loop on this machine: the decision a `python -m dyneval` stage takes before torch loads."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        code = textwrap.dedent("""
            import json, os, time
            time.sleep(0.5)  # the busy loop is running
            from dyneval import cpu
            print(json.dumps([cpu.choose_wait_policy(), os.environ.get("OMP_WAIT_POLICY")]))
            import torch  # OpenMP starts with the decided policy
        """)
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout
    finally:
        busy.kill()
    assert '"PASSIVE"]' in out, out


def test_the_stage_commands_decide_before_torch_is_imported():
    code = ("import sys; from dyneval.__main__ import main; "
            "sys.exit(main(['export', '/nonexistent-run']))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code + "\n"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "nonexistent-run" in r.stderr  # bad input still one line
    probe = ("import sys; import dyneval.cpu as c; from dyneval.__main__ import main; main(['export', '/x']); "
             "print(c.decision)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "omp_wait_policy" in r.stdout and "torch already loaded" not in r.stdout, r.stdout + r.stderr
