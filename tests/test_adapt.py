"""Adaptation variants: legality by construction, virtual ranks, divergence, bad input."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, torchrun
from dyneval import ablation
from dyneval.config import ModelConfig, RunConfig


def fixture_config(fixture_dir, **eval_over) -> RunConfig:
    s = json.loads((fixture_dir / "settings.json").read_text())
    cfg = RunConfig(model=ModelConfig(**s["model"]))
    return cfg.with_overrides({
        "train.data_path": str(fixture_dir), "train.tokenizer_path": str(fixture_dir / "tokenizer.model"),
        "eval.eval_seq_len": 128, "eval.eval_stride": 32, "eval.eval_batch_seqs": 4, "eval.max_val_tokens": 2049,
        "eval.ttt_batch_seqs": 2, "eval.ttt_chunk_tokens": 512, "eval.ttt_epochs": 1, "eval.dyneval_lr": 0.01,
        "eval.adapt_every": 2, "eval.krause_batches": 2, "eval.tail_lr": 0.01, **eval_over})


@pytest.fixture(scope="module")
def setup(fixture_dir):
    from dyneval import data
    cfg = fixture_config(fixture_dir)
    ck = ablation.Checkpoint(cfg, fixture_dir / "final_model.int6.ptz", torch.device("cpu"))
    lut = data.build_byte_lut(fixture_dir / "tokenizer.model", 1024)
    tokens = data.load_validation_tokens(str(fixture_dir / "fineweb_val_*.bin"), 128, 2049)
    return cfg, ck, lut, tokens


LEGAL = [n for n, v in ablation.VARIANTS.items() if v.legal]
P = 1200  # the two streams agree on tokens 0..P


def _changed(tokens):
    other = tokens.clone()
    g = torch.Generator().manual_seed(0)
    other[P + 1:] = torch.randint(4, 1024, (tokens.numel() - P - 1,), generator=g)
    return other


def _compare(name, setup, fixture_dir):
    cfg, ck, lut, tokens = setup
    a, _ = ablation.run_variant(name, ck, tokens, lut, ablation.Quirks(), None, str(fixture_dir))
    b, _ = ablation.run_variant(name, ck, _changed(tokens), lut, ablation.Quirks(), None, str(fixture_dir))
    last_target_token = a.stream["first_scored"] + a.stream["num_scored"]  # target i is token i+1
    before = last_target_token <= P
    assert before.sum() >= 5 and (~before).sum() >= 5
    return a, b, before


@pytest.mark.parametrize("name", LEGAL)
def test_a_legal_variant_scores_tokens_before_p_identically_whatever_follows_p(name, setup, fixture_dir):
    a, b, before = _compare(name, setup, fixture_dir)
    assert np.array_equal(a.stream["nats"][before], b.stream["nats"][before])
    assert not np.array_equal(a.stream["nats"][~before], b.stream["nats"][~before])


def test_pre_eval_ttt_fails_the_legality_test_and_is_marked_not_legal(setup, fixture_dir):
    a, b, before = _compare("pre_eval_ttt", setup, fixture_dir)
    assert not np.array_equal(a.stream["nats"][before], b.stream["nats"][before])
    assert not ablation.VARIANTS["pre_eval_ttt"].legal and not ablation.VARIANTS["pre_eval_ttt+dynamic"].legal


@pytest.mark.parametrize("name", ["dynamic", "pre_eval_ttt", "score_first_ttt", "dynamic_tail"])
def test_one_virtual_rank_equals_the_plain_run(name, setup, fixture_dir):
    cfg, ck, lut, tokens = setup
    a, _ = ablation.run_variant(name, ck, tokens, lut, ablation.Quirks(), None, str(fixture_dir))
    b, _ = ablation.run_variant(name, ck, tokens, lut, ablation.Quirks(), 1, str(fixture_dir))
    assert np.array_equal(a.stream["nats"], b.stream["nats"]) and a.nats == b.nats


def test_two_virtual_ranks_on_one_process_equal_a_real_two_process_gloo_run(fixture_dir, tmp_path):
    cfg = fixture_config(fixture_dir)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    common = ["evaluate", "--artifact", fixture_dir / "final_model.int6.ptz", "--config", tmp_path / "cfg.json",
              "--variants", "dynamic,pre_eval_ttt+dynamic,score_first_ttt", "--device", "cpu"]
    v = run_cli(*common, "--virtual-ranks", "2", "--out", tmp_path / "virtual")
    assert v.returncode == 0, v.stderr[-2000:]
    r = torchrun("-m", "dyneval", *common, "--out", tmp_path / "real", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("dynamic", "pre_eval_ttt+dynamic", "score_first_ttt"):
        a = np.load(tmp_path / "virtual" / f"{name}.npz")
        b = np.load(tmp_path / "real" / f"{name}.npz")
        for k in a.files:
            assert np.array_equal(a[k], b[k]), (name, k)
    assert run_cli(*common, "--out", tmp_path / "one").returncode == 0
    x = json.loads((tmp_path / "one" / "results.json").read_text())["dynamic"]["bpb"]
    y = json.loads((tmp_path / "real" / "results.json").read_text())["dynamic"]["bpb"]
    assert x != y  # the run's rank-local quirk: the number depends on the rank count


def test_a_diverging_adaptation_stops_naming_the_variant_and_step_and_keeps_earlier_results(fixture_dir, tmp_path):
    cfg = fixture_config(fixture_dir, **{"eval.tail_lr": 1e9})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    r = run_cli("evaluate", "--artifact", fixture_dir / "final_model.int6.ptz", "--config", tmp_path / "cfg.json",
                "--variants", "sliding,dynamic_tail", "--device", "cpu", "--out", tmp_path / "o")
    assert r.returncode == 2
    assert "dynamic_tail: adaptation diverged at step" in r.stderr and r.stderr.strip().count("\n") == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert np.isfinite(res["sliding"]["bpb"]) and "error" in res["dynamic_tail"]


def test_an_unknown_variant_is_refused_with_the_list_of_variants(fixture_dir, tmp_path):
    r = run_cli("evaluate", "--artifact", fixture_dir / "final_model.int6.ptz", "--variants", "sliding,magic",
                "--out", tmp_path / "o")
    assert r.returncode == 2 and "unknown variant(s) ['magic']" in r.stderr and "score_first_ttt" in r.stderr


def test_quirk_switches_are_named_and_checked():
    assert ablation.parse_quirks("qat_on=0,rank_local=1") == ablation.Quirks(qat_on=False, rank_local=True)
    with pytest.raises(ValueError, match="bf16"):
        ablation.parse_quirks("bf16=0")


def test_low_rank_adapters_adapt_legally_and_leave_the_trained_weights_untouched(setup):
    from dyneval import adapt, evaluate
    cfg, ck, lut, tokens = setup
    kw = dict(seq_len=128, stride=32, batch_seqs=4, subset="lora", lora_rank=4)
    base = evaluate.evaluate_sliding(ck.model(), tokens, lut, 128, 32, 4)
    zero = adapt.adapt_dynamic_tail(ck.model(), tokens, lut, lr=0.0, **kw)
    assert np.array_equal(zero.stream["nats"], base.stream["nats"])  # B starts at zero: W + BA = W
    m = ck.model()
    a = adapt.adapt_dynamic_tail(m, tokens, lut, lr=0.05, **kw)
    b = adapt.adapt_dynamic_tail(ck.model(), _changed(tokens), lut, lr=0.05, **kw)
    before = a.stream["first_scored"] + a.stream["num_scored"] <= P
    assert np.array_equal(a.stream["nats"][before], b.stream["nats"][before])
    assert a.bpb != base.bpb
    adapted = dict(m.named_parameters())
    bs = [p for n, p in adapted.items() if n.endswith(".parametrizations.weight.0.B")]
    assert len(bs) == 6 * 4 and any(b.abs().sum() > 0 for b in bs)  # 6 linears x 4 blocks, adapted
    original = m.blocks[0].mlp.fc.parametrizations.weight.original
    assert torch.equal(original, ck.state["blocks.0.mlp.fc.weight"])
    with pytest.raises(ValueError, match="Krause statistics do not cover low-rank adapters"):
        adapt.adapt_dynamic_tail(ck.model(), tokens, lut, lr=1e-4, rms_stats={}, **kw)
