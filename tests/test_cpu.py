"""OpenMP's wait policy follows the machine's load when a stage starts; the thread count and the bits never do."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import run_cli
from dyneval import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def own_decision(monkeypatch):
    monkeypatch.setattr(cpu, "decision", {})  # the module's record stays as this pytest process found it


def choose(env, load, cpus=2, modules=()):
    return cpu.choose_wait_policy(env, load=lambda: load, modules=modules, cpus=cpus)["omp_wait_policy"]


def test_busy_machine_sleeps_quiet_machine_spins_the_environment_wins():
    env = {}
    assert choose(env, 1.0) == "PASSIVE" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert choose({}, 0.75) == "PASSIVE"  # the threshold
    env = {}
    assert choose(env, 0.6) == "default" and "OMP_WAIT_POLICY" not in env  # light load: spinning is still faster
    for preset in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(preset)
        out = cpu.choose_wait_policy(env, load=lambda: 2.0, modules=(), cpus=2)
        assert out["source"] == "environment" and env == preset
    assert choose({}, None) == "default"  # load unknown (no /proc/stat): as before
    env = {}
    assert choose(env, 2.0, modules={"torch"}) == "default" and not env  # too late: OpenMP has started
    assert choose({"LOCAL_WORLD_SIZE": "2"}, 2.0) == "default"  # torchrun ranks would see each other start


def test_only_load_on_the_cores_the_stage_would_use_counts():
    assert choose({}, 1.0, cpus=64) == "PASSIVE"  # torch's default: a thread on every core
    assert choose({"OMP_NUM_THREADS": "2"}, 1.0, cpus=64) == "default"  # 62 idle cores for 2 threads
    assert choose({"OMP_NUM_THREADS": "2"}, 62.8, cpus=64) == "PASSIVE"


def _stat(path, rows):
    path.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(
        f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0\n" for i, (busy, idle) in rows.items()) + "intr 1 2 3\n")


def test_load_is_read_from_proc_stat_over_the_affinity_cpus(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, {0: (5, 40), 1: (5, 40), 7: (100, 0)})
    assert cpu._cpu_times({0, 1}, str(stat)) == (10, 90, 2)  # busy = all but idle and iowait; cpu7 not ours

    def sample(before, after, cpus):
        snapshots = iter((before, after))
        _stat(stat, next(snapshots))
        return cpu.other_load(0.3, cpus, str(stat), sleep=lambda s: _stat(stat, next(snapshots)))

    # 30 jiffies per CPU pass; cpu0 was busy for all of them, cpu1 idle: one core of other load
    assert sample({0: (10, 10), 1: (10, 10)}, {0: (40, 10), 1: (10, 40)}, {0, 1}) == pytest.approx(1.0, abs=0.1)
    # a container whose /proc/stat lists other CPUs than its affinity mask: unknown, not misread
    assert sample({0: (10, 10), 1: (10, 10)}, {0: (40, 10), 1: (10, 40)}, set(range(64))) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_stage_started_beside_a_busy_process_sleeps_between_parallel_regions():
    """A real busy loop on this machine: the decision a `python -m dyneval` stage takes before torch loads."""
    if (cpu.other_load(0.5) or 0.0) >= cpu.BUSY_CORES:
        pytest.skip("the machine is already busy: a busy loop would decide nothing")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        code = textwrap.dedent("""
            import json, time
            time.sleep(0.5)  # the busy loop is running
            from dyneval import cpu
            print(json.dumps([cpu.other_load(), cpu.choose_wait_policy()]))
        """)
        env = {k: v for k, v in os.environ.items() if k not in cpu.USER_SETTINGS + ("OMP_NUM_THREADS",)}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout
    finally:
        busy.kill()
        busy.wait()
    seen, chosen = json.loads(out)
    if seen is None or seen < 0.9:
        pytest.skip(f"a busy loop shows as {seen} core(s) here (a CPU quota or a renumbering container)")
    assert chosen["omp_wait_policy"] == "PASSIVE" and chosen["source"] == "load", chosen


def test_the_stage_commands_decide_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in cpu.USER_SETTINGS}
    probe = ("import dyneval.cpu as c; from dyneval.__main__ import main; main(['export', '/nonexistent']); "
             "print(c.decision)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "'source': 'load'" in r.stdout, r.stdout + r.stderr


def test_the_wait_policy_changes_no_bit_of_a_training_run(tmp_path, tiny_cfg):
    """Same config, threads spinning or sleeping: byte-identical weights and artifact."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_cfg.to_dict()))
    for policy in ("ACTIVE", "PASSIVE"):
        r = run_cli("train", "--config", config, "--out", tmp_path / policy, env={"OMP_WAIT_POLICY": policy})
        assert r.returncode == 0, r.stderr[-2000:]
        meta = json.loads((tmp_path / policy / "meta.json").read_text())
        assert meta["env"]["openmp"] == {"omp_wait_policy": policy, "source": "environment",
                                         "why": "OMP_WAIT_POLICY set in the environment"}
    for name in ("final_model.pt", "final_model.int6.ptz"):
        assert (tmp_path / "ACTIVE" / name).read_bytes() == (tmp_path / "PASSIVE" / name).read_bytes(), name
