"""CPU threads on a shared machine: OpenMP's wait policy, chosen from the machine's load before torch loads.

Owns one decision per process, taken by `python -m dyneval` before anything imports torch. The
thread count is part of a run's numerics (2 threads and 1 thread give other bits), so it never
changes with the load; how idle OpenMP threads wait does not change a bit. By default they spin
between parallel regions, which is fastest on a quiet machine and very slow beside a busy process
(the spinning threads take the cores from the thread doing the work: smoke training 4.7x slower beside
one busy loop on 2 cores). Sleeping (`OMP_WAIT_POLICY=PASSIVE`) keeps that near the fair 2x but costs
25% on a quiet machine, and still 16% beside a process that keeps 0.6 of a core busy (docs/LOG.md).
So: when other processes keep at least `BUSY_CORES` busy while a stage starts, it runs PASSIVE;
otherwise with libgomp's default. An `OMP_WAIT_POLICY` set by the
user is always kept (ACTIVE or PASSIVE fixes the choice). Load that arrives after a stage has
started is not seen: the policy is read once, when OpenMP starts.
"""

from __future__ import annotations

import os
import sys
import time

BUSY_CORES = 0.75  # other processes' load (cores of this process's CPUs) from which PASSIVE is faster
SAMPLE_SECONDS = 0.3

# What this process decided, for the run's records (environment_info).
decision: dict = {}


def _cpu_times(cpus: set[int], stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies over `cpus`, or None where /proc/stat cannot be read (not Linux)."""
    busy = total = 0
    try:
        with open(stat) as f:
            for line in f:
                name, *fields = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                    continue
                v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(v)
                busy += sum(v) - v[3] - v[4]
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


def other_load(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores of this process's CPUs kept busy by other processes over a short sample (this one sleeps)."""
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    a = _cpu_times(cpus)
    own = time.process_time()
    time.sleep(seconds)
    b = _cpu_times(cpus)
    if a is None or b is None or b[1] == a[1]:
        return None
    share = max(0.0, (b[0] - a[0]) / (b[1] - a[1]))  # busy share of the sampled CPUs
    mine = (time.process_time() - own) / seconds
    return max(0.0, share * len(cpus) - mine)


def choose_wait_policy(environ=os.environ, load=other_load, modules=sys.modules) -> dict:
    """Set OMP_WAIT_POLICY=PASSIVE in `environ` when the machine is busy; return what was decided and why.

    Changes nothing once torch is imported (OpenMP has read its settings by then)."""
    if "OMP_WAIT_POLICY" in environ:
        out = {"omp_wait_policy": environ["OMP_WAIT_POLICY"], "why": "set by the user"}
    elif "torch" in modules:
        out = {"omp_wait_policy": "default", "why": "torch already loaded"}
    else:
        cores = load()
        if cores is not None and cores >= BUSY_CORES:
            environ["OMP_WAIT_POLICY"] = "PASSIVE"
            out = {"omp_wait_policy": "PASSIVE", "why": f"other processes busy on {cores:.1f} core(s) at start"}
        else:
            why = "load unknown" if cores is None else f"other load {cores:.1f} core(s) at start"
            out = {"omp_wait_policy": "default", "why": why}
    decision.clear()
    decision.update(out)
    return out
