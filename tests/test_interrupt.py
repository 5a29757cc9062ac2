"""Training state: checkpoints that never run code, Ctrl-C between steps, signals during the export, resume checks."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli


def _sets(corpus_root, extra=()):
    sets = TINY_OVERRIDES + [f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
                             f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}",
                             "train.iterations=12", "train.warmdown_iters=6", *extra]
    return [a for s in sets for a in ("--set", s)]


def _train(out, corpus_root, *extra):
    return [sys.executable, "-m", "dyneval", "train", "--profile", "smoke", "--out", str(out), "--device", "cpu",
            *_sets(corpus_root), *extra]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _signal_when(cmd, pattern: str, sig, delay: float = 0.0):
    """Start `cmd`, send `sig` `delay` s after a line containing `pattern`; return (rc, output)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
    lines, sent = [], False
    for line in p.stdout:
        lines.append(line)
        if not sent and pattern in line:
            time.sleep(delay)
            p.send_signal(sig)
            sent = True
    return p.wait(timeout=600), "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_root):
    out = tmp_path_factory.mktemp("whole")
    r = subprocess.run(_train(out, corpus_root), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return _sha(out / "final_model.int6.ptz")


def test_ctrl_c_at_random_points_resumes_to_the_uninterrupted_artifact(uninterrupted, corpus_root, tmp_path):
    rng = random.Random(397)
    points = sorted(rng.sample(range(1, 11), 5))
    interrupted = 0
    for k in points:
        out = tmp_path / f"int{k}"
        rc, log = _signal_when(_train(out, corpus_root), f"step:{k}/12 train_loss", signal.SIGINT,
                               delay=rng.uniform(0.0, 0.3))
        if rc == 0:  # on a fast box the signal can land after the last step: the export finishes regardless
            assert "(end of training)" in log and (out / "meta.json").is_file(), log[-1500:]
        else:
            assert rc == 130 and "checkpoint: step" in log and "(interrupted)" in log, log[-1500:]
            interrupted += 1
            r = subprocess.run(_train(out, corpus_root, "--resume"), capture_output=True, text=True, env=_env(),
                               cwd=REPO, timeout=600)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert _sha(out / "final_model.int6.ptz") == uninterrupted, f"SIGINT after step {k}"
    assert interrupted >= 3, f"only {interrupted} of {len(points)} signals landed inside the training loop"


def test_a_signal_during_the_final_export_does_not_lose_the_run(uninterrupted, corpus_root, tmp_path):
    out = tmp_path / "export"
    rc, log = _signal_when(_train(out, corpus_root), "(end of training)", signal.SIGTERM)
    assert "checkpoint: step 12 (end of training)" in log
    assert rc == 0 and (out / "meta.json").is_file(), log[-1500:]
    assert _sha(out / "final_model.int6.ptz") == uninterrupted


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(corpus_root, tmp_path):
    out = tmp_path / "evil"
    out.mkdir()
    planted = tmp_path / "planted"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    import torch
    torch.save({"model": Evil()}, out / "checkpoint.pt")
    r = subprocess.run(_train(out, corpus_root, "--resume"), capture_output=True, text=True, env=_env(), cwd=REPO,
                       timeout=600)
    assert r.returncode == 2 and "checkpoint.pt: not a checkpoint of tensors" in r.stderr, r.stderr[-1500:]
    assert r.stderr.strip().count("\n") == 0
    assert not planted.exists()


def test_resuming_with_another_config_is_refused_naming_the_field(corpus_root, tmp_path):
    out = tmp_path / "cfg"
    rc, log = _signal_when(_train(out, corpus_root), "step:3/12 train_loss", signal.SIGINT)
    assert rc == 130
    r = run_cli("train", "--profile", "smoke", "--out", out, "--device", "cpu", "--resume",
                *_sets(corpus_root, ["train.seed=5"]))
    assert r.returncode == 2 and "written by another config (train.seed: checkpoint 1337, now 5)" in r.stderr, \
        r.stderr[-1500:]
