"""CPU threads on a shared machine: OpenMP's wait policy, chosen from the machine's load before torch loads.

Owns one decision per process, taken by `python -m dyneval` for its torch commands before anything
imports torch. The thread count is part of a run's numerics (2 threads and 1 thread give other bits),
so it never changes with the load; how idle OpenMP threads wait does not change a bit. By default
they spin between parallel regions, which is fastest on a quiet machine and very slow beside a busy
process (the spinning threads take the cores from the thread doing the work: smoke training 5-7x
slower beside one busy loop on 2 cores). Sleeping (`OMP_WAIT_POLICY=PASSIVE`) keeps that near the
fair 2x but costs 25% on a quiet machine, and still 16% beside a process that keeps 0.6 of a core
busy (docs/LOG.md). So: when other processes' load exceeds the cores the stage's threads leave idle
by `BUSY_CORES` or more, it runs PASSIVE; otherwise with libgomp's default. A wait policy
or spin count already in the environment is always kept. Not sampled: several ranks of one torchrun
on this machine (each would see the others starting) and machines without /proc/stat. Load that
arrives after a stage has started is not seen: OpenMP reads its settings once.
"""

from __future__ import annotations

import os
import sys
import time

# Other processes' load, in cores beyond the ones the stage's threads leave idle, from which PASSIVE is
# the faster policy: between the measured 0.6 core (spinning faster) and 1.0 core (sleeping 2.2x faster).
BUSY_CORES = 0.75
SAMPLE_SECONDS = 0.3  # long enough for 30 jiffies per CPU at 100 Hz; paid once per stage
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # libgomp ignores the policy for spinning when a count is set

# What this process decided, for the run's records (meta.json, results.json).
decision: dict = {}


def _cpu_times(cpus: set[int], stat: str = "/proc/stat") -> tuple[int, int, int] | None:
    """(busy, total jiffies, CPUs found) over `cpus`, or None where /proc/stat cannot be read."""
    busy = total = found = 0
    try:
        with open(stat) as f:
            for line in f:
                name, *fields = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                    continue
                v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(v)
                busy += sum(v) - v[3] - v[4]
                found += 1
    except (OSError, ValueError):
        return None
    return (busy, total, found) if total else None


def other_load(seconds: float = SAMPLE_SECONDS, cpus: set[int] | None = None, stat: str = "/proc/stat",
               sleep=time.sleep) -> float | None:
    """Cores of this process's CPUs kept busy by other processes over a short sample (this one sleeps).

    None when /proc/stat does not list every CPU of the affinity mask (a container that renumbers
    them): the load would be misread."""
    if cpus is None:
        cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    a = _cpu_times(cpus, stat)
    own = time.process_time()
    sleep(seconds)
    b = _cpu_times(cpus, stat)
    if a is None or b is None or b[1] == a[1] or a[2] != len(cpus) or b[2] != len(cpus):
        return None
    share = max(0.0, (b[0] - a[0]) / (b[1] - a[1]))  # busy share of the sampled CPUs
    mine = (time.process_time() - own) / seconds
    return max(0.0, share * len(cpus) - mine)


def stage_threads(environ, cpus: int) -> int:
    """The OpenMP threads a stage will run: OMP_NUM_THREADS, else torch's default (every core it may use)."""
    try:
        return max(1, int(environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return cpus


def choose_wait_policy(environ=os.environ, load=other_load, modules=sys.modules, cpus: int | None = None) -> dict:
    """Set OMP_WAIT_POLICY=PASSIVE in `environ` when the machine is busy; return what was decided, from
    what (`source`: environment / load / not sampled) and why."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    set_by_env = [k for k in USER_SETTINGS if k in environ]
    if set_by_env:
        out = {"omp_wait_policy": environ.get("OMP_WAIT_POLICY", "default"), "source": "environment",
               "why": f"{', '.join(set_by_env)} set in the environment"}
    elif "torch" in modules:
        out = {"omp_wait_policy": "default", "source": "not sampled", "why": "torch already loaded"}
    elif int(environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
        out = {"omp_wait_policy": "default", "source": "not sampled", "why": "several torchrun ranks on this machine"}
    else:
        cores = load()
        spare = max(0, cpus - stage_threads(environ, cpus))  # cores the stage's threads leave idle
        if cores is not None and cores >= spare + BUSY_CORES:
            environ["OMP_WAIT_POLICY"] = "PASSIVE"
            out = {"omp_wait_policy": "PASSIVE", "source": "load",
                   "why": f"other processes busy on {cores:.1f} core(s) at start"}
        else:
            why = "load unknown" if cores is None else f"other load {cores:.1f} core(s) at start"
            out = {"omp_wait_policy": "default", "source": "load", "why": why}
    decision.clear()
    decision.update(out)
    return out
