"""Scoring invariants on the fixture's checkpoint and validation tokens (CPU, float32)."""

import json

import numpy as np
import pytest
import torch

from dyneval import adapt, data, evaluate
from dyneval.config import DynamicSettings, ModelConfig, Scoring
from dyneval.evaluate import Scorer
from dyneval.model import GPT, load_weights

PLAN = Scoring(seq_len=128, stride=32, batch_seqs=8)


@pytest.fixture(scope="module")
def fx(fixture_dir):
    s = json.loads((fixture_dir / "settings.json").read_text())
    cfg = ModelConfig(**s["model"])
    state = torch.load(fixture_dir / "trained.pt", weights_only=True)
    lut = data.build_byte_lut(fixture_dir / "tokenizer.model", cfg.vocab_size)
    tokens = data.load_validation_tokens(str(fixture_dir / "fineweb_val_*.bin"), 128)[:4097]

    def model():
        return load_weights(GPT(cfg), state, "trained.pt")

    return model, Scorer(tokens, lut, PLAN)


def test_sliding_eval_with_stride_equal_to_seq_len_equals_non_overlapping_eval(fx):
    model, sc = fx
    a = evaluate.evaluate_nonoverlap(model(), sc)
    b = evaluate.evaluate_sliding(model(), Scorer(sc.tokens, sc.lut, Scoring(seq_len=128, stride=128, batch_seqs=8)))
    assert a.tokens == b.tokens and a.bytes == b.bytes
    assert abs(a.nats - b.nats) < 1e-9 * a.nats


def test_dynamic_eval_with_lr_zero_equals_sliding_eval_exactly(fx):
    model, sc = fx
    s = evaluate.evaluate_sliding(model(), sc)
    d = adapt.adapt_dynamic(model(), sc, DynamicSettings(lr=0.0, adapt_every=2))
    assert np.array_equal(s.stream["nats"], d.stream["nats"])
    assert (s.nats, s.tokens, s.bytes) == (d.nats, d.tokens, d.bytes)


def test_the_same_inputs_give_bitwise_the_same_result_twice(fx):
    model, sc = fx
    a = adapt.adapt_dynamic(model(), sc, DynamicSettings(lr=0.01, adapt_every=2))
    b = adapt.adapt_dynamic(model(), sc, DynamicSettings(lr=0.01, adapt_every=2))
    assert np.array_equal(a.stream["nats"], b.stream["nats"]) and a.nats == b.nats


def test_the_stream_sums_to_the_pass_bpb_and_batch_size_only_changes_summation_order(fx):
    model, sc = fx
    r = evaluate.evaluate_sliding(model(), sc)
    assert set(r.stream) == set(evaluate.STREAM_FIELDS)
    assert r.stream["nats"].sum() / np.log(2) / r.stream["bytes"].sum() == pytest.approx(r.bpb, rel=1e-12)
    assert r.stream["num_scored"].sum() == r.tokens
    r3 = evaluate.evaluate_sliding(model(), Scorer(sc.tokens, sc.lut, Scoring(seq_len=128, stride=32, batch_seqs=3)))
    assert r3.bpb == pytest.approx(r.bpb, abs=1e-6)


def test_sliding_windows_cover_every_target_and_repeat_only_the_final_stride():
    w = evaluate.sliding_windows(1000, 128, 32)
    first = w.starts + w.score_from
    covered = np.zeros(1000, int)
    for f, n in zip(first, w.lengths - w.score_from):
        covered[f: f + n] += 1
    assert covered.min() == 1
    assert (covered > 1).sum() == 32  # the run's quirk: windows reaching the end rescore the last S targets


def test_splitting_windows_over_ranks_is_contiguous_and_complete():
    w = evaluate.sliding_windows(1000, 128, 32)
    parts = [w.for_rank(r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate([p.starts for p in parts]), w.starts)


def test_a_tokenizer_whose_vocabulary_does_not_match_the_model_is_refused(fixture_dir):
    with pytest.raises(ValueError, match=r"tokenizer\.model: tokenizer has 1024 pieces but the model's vocab_size is 2048"):
        data.build_byte_lut(fixture_dir / "tokenizer.model", 2048)
