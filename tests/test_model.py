"""The record GPT: shape options, key names, load errors, dtype policy."""

import pytest
import torch

from dyneval.config import ModelConfig
from dyneval.model import GPT, apply_dtype_policy, check_state_dict, fake_quantize_int6

SHAPES = [
    dict(),
    dict(num_layers=3),
    dict(tie_embeddings=False),
    dict(bigram_vocab_size=0),
    dict(bigram_dim=64),  # equal to model_dim: no projection
    dict(rope_dims=0),
    dict(xsa_last_n=5, num_layers=5),
    dict(ln_scale=False),
    dict(num_kv_heads=2),
]


@pytest.mark.parametrize("over", SHAPES, ids=[str(s) or "default" for s in SHAPES])
def test_every_shape_option_builds_runs_forward_and_backward(over):
    base = dict(vocab_size=64, num_layers=4, model_dim=64, num_heads=2, num_kv_heads=1, bigram_vocab_size=32,
                bigram_dim=16, xsa_last_n=2, rope_dims=8)
    cfg = ModelConfig(**{**base, **over})
    torch.manual_seed(0)
    m = GPT(cfg)
    ids = torch.randint(0, 64, (2, 24))
    loss = m(ids, ids.roll(-1, 1))
    loss.backward()
    assert torch.isfinite(loss)
    names = set(m.state_dict())
    assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)
    assert ("bigram.embed.weight" in names) == (cfg.bigram_vocab_size > 0)
    assert ("bigram.proj.weight" in names) == (cfg.bigram_vocab_size > 0 and cfg.bigram_dim != cfg.model_dim)
    assert m.skip_weights.shape == (min(cfg.num_layers // 2, cfg.num_layers - cfg.num_layers // 2), cfg.model_dim)
    # no buffers: DDP is built without a buffer-sync argument (train.py), which would have nothing to sync
    assert not list(m.buffers())


def test_the_fixture_checkpoint_loads_with_the_record_key_names(fixture_dir):
    import json
    s = json.loads((fixture_dir / "settings.json").read_text())
    sd = torch.load(fixture_dir / "trained.pt", weights_only=True)
    m = GPT(ModelConfig(**s["model"]))
    assert list(m.state_dict()) == list(sd)


def test_a_state_dict_with_missing_or_extra_keys_is_refused_naming_the_file():
    cfg = ModelConfig(vocab_size=64, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, bigram_vocab_size=0,
                      xsa_last_n=1, rope_dims=8)
    m = GPT(cfg)
    sd = dict(m.state_dict())
    sd.pop("smear.gate")
    with pytest.raises(ValueError, match=r"ckpt\.pt: .*missing keys \['smear.gate'\]"):
        check_state_dict(m, sd, "ckpt.pt")
    sd = dict(m.state_dict(), extra=torch.zeros(1))
    with pytest.raises(ValueError, match=r"ckpt\.pt: .*unexpected keys \['extra'\]"):
        check_state_dict(m, sd, "ckpt.pt")


def test_bad_model_config_values_name_the_field():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=8, num_kv_heads=3)
    with pytest.raises(ValueError, match="rope_dims"):
        ModelConfig(rope_dims=7)


def test_fake_quantization_lands_on_the_int6_grid_and_passes_gradients_straight_through():
    w = torch.randn(8, 32, requires_grad=True)
    q = fake_quantize_int6(w)
    s = (w.detach().abs().amax(1, keepdim=True) / 31).clamp_min(1 / 31)
    k = q.detach() / s
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= -32 and k.max() <= 31
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_dtype_policy_keeps_linears_and_control_tensors_fp32_and_tables_bf16():
    cfg = ModelConfig(vocab_size=64, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, bigram_vocab_size=32,
                      bigram_dim=16, xsa_last_n=1, rope_dims=8)
    m = apply_dtype_policy(GPT(cfg))
    assert m.tok_emb.weight.dtype == torch.bfloat16 and m.bigram.embed.weight.dtype == torch.bfloat16
    assert m.blocks[0].attn.c_q.weight.dtype == torch.float32 and m.blocks[0].resid_mix.dtype == torch.float32
    assert m.skip_weights.dtype == torch.float32 and m.smear.gate.dtype == torch.float32
    m2 = apply_dtype_policy(GPT(cfg), bf16_tables=False)
    assert m2.tok_emb.weight.dtype == torch.float32
