"""Shared test fixtures: the reference fixtures' locations, a tiny model config, and a small corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# The compact reference fixture ships inside the package, so a clean clone checks parity with nothing beside
# it; DYNEVAL_FIXTURE points every fixture test at another directory of the same schema instead.
COMPACT = REPO / "dyneval" / "fixtures" / "compact397"
FIXTURE = Path(os.environ.get("DYNEVAL_FIXTURE", COMPACT))
# The larger public fixture, where the shared reference sits beside the checkout (CI): a second parity case.
SEED397 = REPO.parent / "shared" / "fixtures" / "seed397"
PARITY_FIXTURES = [FIXTURE] + ([SEED397] if (SEED397 / "expected.json").is_file() and SEED397 != FIXTURE else [])


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The reference fixture every fixture test uses; a missing one is an error, never a skip."""
    assert (FIXTURE / "expected.json").is_file(), f"reference fixture not found at {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory) -> Path:
    """The embedded corpus, built once per test session."""
    from dyneval import corpus

    root = tmp_path_factory.mktemp("data")
    corpus.build_embedded(root, log=lambda *_: None)
    return root


TINY_OVERRIDES = [
    "model.num_layers=3", "model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1",
    "model.bigram_vocab_size=64", "model.bigram_dim=16", "model.xsa_last_n=1", "model.rope_dims=8",
    "train.train_batch_tokens=1024", "train.train_seq_len=128", "train.iterations=5", "train.warmup_steps=1",
    "train.val_loss_every=0", "train.val_batch_size_tokens=1024", "train.max_val_tokens=2049",
    "train.grad_accum_total=2", "train.checkpoint_every=0", "train.train_log_every=1", "train.warmdown_iters=2",
    "optim.muon_momentum_warmup_steps=3", "train.ema_decay=0.5", "train.late_qat_threshold=0.6",
    "eval.eval_seq_len=128", "eval.eval_stride=32", "eval.eval_batch_seqs=4", "eval.max_val_tokens=2049",
    "eval.ttt_batch_seqs=2", "eval.ttt_chunk_tokens=512", "eval.ttt_epochs=1", "eval.krause_batches=2",
]


@pytest.fixture(scope="session")
def tiny_cfg(corpus_root):
    from dyneval.config import preset

    return preset("smoke").with_overrides(TINY_OVERRIDES + [
        f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
        f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}"])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus_root):
    """A 5-step run of the tiny config through the command line (2,048 validation and tuning targets, stride
    32, score-first chunks of 512), shared by the legality and sweep tests, which only read it."""
    out = tmp_path_factory.mktemp("tiny_run")
    sets = TINY_OVERRIDES + [f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
                             f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}"]
    r = run_cli("train", "--profile", "smoke", "--out", out, "--device", "cpu", *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def run_cli(*args, env=None, timeout=600, cwd=None):
    import subprocess

    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "dyneval", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=cwd or REPO)


def torchrun(*args, nproc=2, extra=(), timeout=600):
    import subprocess

    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO)


def one_line_error(r, *needles):
    """rc 2 and exactly one stderr line `dyneval: error: ...` containing every needle."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"rc {r.returncode}: {r.stdout[-1500:]} {r.stderr[-1500:]}"
    assert len(lines) == 1 and lines[0].startswith("dyneval: error: "), r.stderr[-1500:]
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]
