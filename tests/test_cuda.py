"""CUDA paths: the GPU dtype policy under torch.compile, compiled scoring, a short CUDA training run.

Skipped cleanly on machines without a GPU (CI); run on the lent device machine.
"""


import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg():
    from dyneval.config import ModelConfig
    return ModelConfig(num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, bigram_vocab_size=512,
                       bigram_dim=64, xsa_last_n=2)


def test_compiled_bf16_forward_matches_eager_under_the_gpu_dtype_policy():
    from dyneval.model import GPT, apply_dtype_policy
    torch.manual_seed(0)
    m = apply_dtype_policy(GPT(_cfg()).cuda())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ids = torch.randint(0, 1024, (4, 512), device="cuda")
    c = torch.compile(m, dynamic=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = m(ids, ids.roll(-1, 1))
        b = c(ids, ids.roll(-1, 1))
    assert torch.isfinite(a) and abs(a.item() - b.item()) < 2e-2


def test_compiled_sliding_and_dynamic_eval_run_on_cuda_and_lr_zero_equals_sliding():
    from dyneval import adapt, evaluate
    from dyneval.data import ByteLUT
    from dyneval.model import GPT, apply_dtype_policy
    torch.manual_seed(0)
    m = apply_dtype_policy(GPT(_cfg()).cuda())
    tokens = torch.randint(4, 1024, (4097,), device="cuda")
    lut = ByteLUT(torch.ones(1024, dtype=torch.long, device="cuda"), torch.zeros(1024, dtype=torch.bool, device="cuda"),
                  torch.zeros(1024, dtype=torch.bool, device="cuda"))
    from dyneval.config import DynamicSettings, Scoring, TailSettings
    sc = Scoring(seq_len=512, stride=64, batch_seqs=8)
    sc = evaluate.Scorer(tokens, lut, sc, autocast=True)
    s = evaluate.evaluate_sliding(m, sc, forward=evaluate.compiled(m, True))
    d = adapt.adapt_dynamic(m, sc, DynamicSettings(lr=0.0, adapt_every=4), compile=True)
    assert abs(s.bpb - d.bpb) < 1e-2  # train-mode vs eval-mode graphs fuse differently in bf16
    t = adapt.adapt_dynamic_tail(m, sc, TailSettings(lr=1e-3, subset="all", lora_rank=8), compile=True)
    assert torch.isfinite(torch.tensor(t.bpb))


def test_a_short_cuda_training_run_writes_an_artifact_that_loads_back_and_scores(tmp_path):
    from dyneval import corpus
    from dyneval.config import preset
    from dyneval.train import train
    corpus.build_embedded(tmp_path / "data", log=lambda *_: None)
    cfg = preset("smoke").with_overrides({
        "train.data_path": str(tmp_path / "data" / "datasets" / "embedded_sp1024"),
        "train.tokenizer_path": str(tmp_path / "data" / "tokenizers" / "embedded_1024_bpe.model"),
        "train.iterations": 20, "train.compile": True, "train.val_loss_every": 10, "train.checkpoint_every": 0})
    meta = train(cfg, tmp_path / "run", device="cuda")
    h = meta["history"]["val"]
    assert h[-1]["val_bpb"] < h[0]["val_bpb"] and (tmp_path / "run" / "final_model.int6.ptz").is_file()
    assert meta["env"]["gpus"]
    # the artifact written on the GPU, loaded back and scored there: non-overlapping equals training's round trip
    from dyneval.evaluate_stage import EvalOptions, evaluate_artifact
    res = evaluate_artifact(cfg, tmp_path / "run" / "final_model.int6.ptz", tmp_path / "eval",
                            ["nonoverlap", "sliding", "dynamic"], EvalOptions(device="cuda"), log=lambda *_: None)
    assert all(0 < res[v]["bpb"] < 20 for v in res)
    assert abs(res["nonoverlap"]["bpb"] - meta["int6_roundtrip"]["bpb"]) < 2e-2  # bf16, compiled vs eager


def test_evaluate_and_bench_eval_record_the_same_cuda_backend_settings(tmp_path):
    import json
    import subprocess
    import sys
    from conftest import REPO
    from dyneval import corpus, quant
    from dyneval.config import preset
    from dyneval.model import GPT
    corpus.build_embedded(tmp_path / "data", log=lambda *_: None)
    cfg = preset("smoke").with_overrides({
        "train.data_path": str(tmp_path / "data" / "datasets" / "embedded_sp1024"),
        "train.tokenizer_path": str(tmp_path / "data" / "tokenizers" / "embedded_1024_bpe.model"),
        "train.cudnn_attention": True})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    torch.manual_seed(0)
    quant.write_artifact(tmp_path / "a.ptz", GPT(cfg.model).state_dict())
    run = lambda *a: subprocess.run([sys.executable, "-m", "dyneval", *map(str, a)], capture_output=True,  # noqa
                                    text=True, cwd=REPO, timeout=600)
    e = run("evaluate", "--artifact", tmp_path / "a.ptz", "--config", tmp_path / "cfg.json", "--variants", "sliding",
            "--out", tmp_path / "o")
    assert e.returncode == 0, e.stderr[-2000:]
    b = run("bench", "eval", "--config", tmp_path / "cfg.json", "--variants", "sliding", "--windows", "64")
    assert b.returncode == 0, b.stderr[-2000:]
    recorded = json.loads((tmp_path / "o" / "results.json").read_text())["sliding"]["backends"]
    assert json.loads(b.stdout.splitlines()[-1])["backends"] == recorded
    assert recorded["sdpa_cudnn"] and recorded["expand_kv"] and recorded["tf32"]
