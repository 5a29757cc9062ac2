"""Resume under torchrun: every rank's optimizer state reaches the checkpoint, so 2 gloo processes
interrupted by SIGTERM or SIGINT at a random step and resumed end bitwise equal to the uninterrupted run."""

import hashlib
import os
import random
import signal
import subprocess
import sys

import pytest

from conftest import REPO, TINY_OVERRIDES

STEPS = 12


def _sets(corpus_root):
    sets = TINY_OVERRIDES + [f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
                             f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}",
                             f"train.iterations={STEPS}", "train.warmdown_iters=6"]
    return [a for s in sets for a in ("--set", s)]


def _train(out, corpus_root, nproc, *extra):
    launcher = [sys.executable, "-m", "dyneval"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "dyneval"]
    return [*launcher, "train", "--profile", "smoke", "--out", str(out), "--device", "cpu", *_sets(corpus_root), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _interrupt(cmd, step: int, sig, group: bool):
    """Start `cmd` in its own process group; after rank 0 logs `step`, send `sig` to torchrun alone (a
    scheduler's SIGTERM) or to the whole group (Ctrl-C in a terminal). Returns (rc, output)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO,
                         start_new_session=True)
    lines, sent = [], False
    for line in p.stdout:
        lines.append(line)
        if not sent and f"step:{step}/{STEPS} train_loss" in line:
            os.killpg(p.pid, sig) if group else p.send_signal(sig)
            sent = True
    return p.wait(timeout=600), "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_root):
    out = tmp_path_factory.mktemp("whole2")
    _run(_train(out, corpus_root, 2))
    return {name: _sha(out / name) for name in ("final_model.pt", "final_model.int6.ptz")}


@pytest.mark.parametrize("sig,group", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "sigint"])
def test_two_gloo_processes_interrupted_at_a_random_step_resume_bitwise(uninterrupted, corpus_root, tmp_path, sig,
                                                                        group):
    rng = random.Random(f"resume-{int(sig)}")
    step = rng.randrange(2, STEPS - 2)
    print(f"{signal.Signals(sig).name} after step {step} of {STEPS}")  # the random step, in the test's log
    out = tmp_path / "run"
    rc, log = _interrupt(_train(out, corpus_root, 2), step, sig, group)
    assert rc != 0 and "(interrupted)" in log and not (out / "meta.json").exists(), log[-2000:]
    _run(_train(out, corpus_root, 2, "--resume"))
    got = {name: _sha(out / name) for name in uninterrupted}
    assert got == uninterrupted, f"{signal.Signals(sig).name} after step {step}"


def test_a_two_process_checkpoint_resumes_on_one_process_to_the_same_bits(uninterrupted, corpus_root, tmp_path):
    """Another world size is handled, not refused: the checkpoint holds every rank's Muon momentum, and
    each process takes the buffers of the matrices it owns at its own world size (2 processes are
    bitwise one process with accumulation, so the result is the uninterrupted run's)."""
    out = tmp_path / "run"
    rc, log = _interrupt(_train(out, corpus_root, 2), 5, signal.SIGTERM, False)
    assert rc != 0 and "(interrupted)" in log, log[-2000:]
    r = _run(_train(out, corpus_root, 1, "--resume"))
    assert "resumed from" in r.stdout and "world size 2" in r.stdout, r.stdout[-2000:]
    assert {name: _sha(out / name) for name in uninterrupted} == uninterrupted
