"""The GPU dtype policy on the CPU (`eval.gpu_dtypes=1`, `train.gpu_dtypes=1`): bf16 tables and bf16 autocast,
so the bf16 paths run in CI. What this does not show: CPU autocast casts other operations than CUDA's (and
the CPU's bf16 matmuls round differently from cuBLAS's), so the GPU's bf16 numbers stay unmeasured; it shows
that the paths run, keep their properties (legality, fp32 master weights) and that bf16 tables behave as
the run's did."""

import numpy as np
import pytest
import torch

from dyneval import variants
from dyneval.adapt import Quirks
from test_adapt import LEGAL, _check, fixture_config, run_variant


@pytest.fixture(scope="module")
def gpu_policy(fixture_dir, tiny_cfg):
    """The tiny record-shaped model (bf16 matmuls are slow on CPUs without bf16 units: width 64, 3 layers),
    trained weights replaced by a seeded init, on the fixture's validation tokens."""
    from dyneval import data
    from dyneval.model import GPT
    cfg = fixture_config(fixture_dir, **{"eval.gpu_dtypes": "1"})
    cfg = cfg.with_overrides({f"model.{k}": v for k, v in vars(tiny_cfg.model).items()})
    torch.manual_seed(0)
    ck = variants.DequantizedArtifact.from_state(cfg, GPT(cfg.model).state_dict(), torch.device("cpu"))
    lut = data.build_byte_lut(fixture_dir / "tokenizer.model", 1024)
    tokens = data.load_validation_tokens(str(fixture_dir / "fineweb_val_*.bin"), 128, 2049)
    return cfg, ck, lut, tokens


def test_the_gpu_policy_on_the_cpu_gives_bf16_tables_and_autocast(gpu_policy):
    cfg, ck, lut, tokens = gpu_policy
    m = ck.model()
    assert m.tok_emb.weight.dtype == torch.bfloat16 and m.bigram.embed.weight.dtype == torch.bfloat16
    assert ck.model(bf16_tables=False).tok_emb.weight.dtype == torch.float32
    job = variants.job_for(variants.VARIANTS["dynamic"], cfg, variants.EvalInputs(ck, tokens, lut, {"expand_kv": False}),
                           Quirks(), variants.Ranks(), {})
    assert job.autocast


def test_small_sgd_steps_on_a_bf16_table_are_lost_to_rounding_as_on_the_runs_gpus(gpu_policy):
    """The run's dynamic eval (plain SGD, lr 1e-3 on the record) on bf16 tables: many touched table entries
    do not move at all, since lr * grad is below half a bf16 ulp of the entry; fp32 tables move everywhere
    the gradient is non-zero. This is the `bf16_tables` quirk's mechanism."""
    from dyneval.adapt import DynamicStep
    from dyneval.config import DynamicSettings
    cfg, ck, lut, tokens = gpu_policy
    x = tokens[:-1][:4 * 128].view(4, 128)
    y = tokens[1:][:4 * 128].view(4, 128)
    moved = {}
    for bf16 in (True, False):
        m = ck.model(bf16_tables=bf16).train()
        before = m.tok_emb.weight.detach().float().clone()
        DynamicStep(m, m.parameters(), DynamicSettings(lr=1e-3, adapt_every=1), True, "dynamic")(0, x, y)
        rows = torch.unique(torch.cat([x[:1].flatten(), y[:1].flatten()]))  # the tied table: inputs and targets
        delta = (m.tok_emb.weight.detach().float() - before)[rows]
        moved[bf16] = (delta != 0).float().mean().item()
    assert moved[False] > 0.99, moved
    assert moved[True] < 0.75, moved  # about half of the entries keep their value here (0.53 moved)


def test_dynamic_tail_keeps_fp32_master_weights_so_bf16_tables_learn_and_the_quirk_changes_the_run_s_number(
        gpu_policy):
    cfg, ck, lut, tokens = gpu_policy
    bf16, _ = run_variant("dynamic", ck, tokens, lut)
    fp32, _ = run_variant("dynamic", ck, tokens, lut, quirks=Quirks(bf16_tables=False))
    assert bf16.nats != fp32.nats  # the run's dynamic eval: its table updates are (partly) lost
    tail, _ = run_variant("dynamic_tail", ck, tokens, lut)  # fp32 master copies, written back as bf16
    tail_fp32, _ = run_variant("dynamic_tail", ck, tokens, lut, quirks=Quirks(bf16_tables=False))
    sliding, _ = run_variant("sliding", ck, tokens, lut)
    assert tail.bpb < sliding.bpb and tail_fp32.bpb < sliding.bpb
    # with master weights the table dtype changes the number by rounding of the written-back values only
    assert abs(tail.bpb - tail_fp32.bpb) < abs(tail.bpb - sliding.bpb) / 10


@pytest.mark.parametrize("name", LEGAL)
def test_a_legal_variant_stays_prefix_invariant_under_the_gpu_policy(name, gpu_policy):
    """The legality command's check (dyneval/legality.py) with the GPU dtype policy on."""
    verdict = _check(name, gpu_policy)
    assert verdict.invariant and verdict.ok, verdict.line()


def test_krause_and_ttt_run_under_bf16_autocast_and_score_finite(gpu_policy):
    cfg, ck, lut, tokens = gpu_policy
    for name in ("dynamic_krause", "pre_eval_ttt", "score_first_ttt+dynamic"):
        res, _ = run_variant(name, ck, tokens, lut)
        assert np.isfinite(res.bpb) and 0 < res.bpb < 10, name


def test_an_artifact_of_bf16_tables_is_the_artifact_of_the_same_values_in_fp32(gpu_policy, tmp_path):
    """Export under the GPU policy: the exporter quantizes bf16 tables exactly as their fp32 values, and
    loading into a bf16 template gives bf16 tables back."""
    from dyneval import quant
    cfg, ck, lut, tokens = gpu_policy
    m = ck.model()
    state = {k: v.detach() for k, v in m.state_dict().items()}
    as_fp32 = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in state.items()}
    quant.write_artifact(tmp_path / "bf16.ptz", state)
    quant.write_artifact(tmp_path / "fp32.ptz", as_fp32)
    assert (tmp_path / "bf16.ptz").read_bytes() == (tmp_path / "fp32.ptz").read_bytes()
    back = quant.load_artifact(tmp_path / "bf16.ptz", m.state_dict())
    assert back["tok_emb.weight"].dtype == torch.bfloat16
