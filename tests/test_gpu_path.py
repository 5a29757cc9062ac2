"""The GPU halves of the CPU tests of the compiled and multi-rank paths (scripts/gpu_check.sh runs them):
graph counts with inductor on CUDA, and a 2-rank NCCL resume where 2 GPUs exist. Skipped without CUDA."""

import json
import signal

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_training_and_every_variant_compiled_with_inductor_on_cuda_stay_in_the_graph_budget(tiny_cfg, corpus_root,
                                                                                           tmp_path):
    from test_compiled import GRAPH_BUDGET
    from test_resume_ranks import _sets
    r = run_cli("train", "--profile", "smoke", "--out", tmp_path / "run", "--device", "cuda", *_sets(corpus_root),
                "--set", "train.compile=auto", "--set", "train.qat_trains=1")
    assert r.returncode == 0, r.stderr[-3000:]
    g = json.loads((tmp_path / "run" / "meta.json").read_text())["graphs"]
    assert g["by_phase"]["timed_steps"] == 0 and g["by_phase"].get("qat_switch") == 1, g
    e = run_cli("evaluate", "--run-dir", tmp_path / "run", "--variants", "all", "--device", "cuda",
                "--set", "eval.eval_batch_seqs=5", "--set", "eval.compile_dynamic=1", "--out", tmp_path / "eval")
    assert e.returncode == 0, e.stderr[-3000:]
    assert "recompile_limit" not in e.stderr + e.stdout, e.stderr[-3000:]
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    counts = {n: {k: v["graphs"] for k, v in res[n]["graphs"].items()} for n in res}
    print("graphs on CUDA:", counts)
    assert counts == GRAPH_BUDGET


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_ranks_interrupted_by_sigterm_resume_to_the_uninterrupted_run(corpus_root, tmp_path):
    """Bitwise where two uninterrupted runs are (CUDA's embedding backward adds with atomics: when two
    uninterrupted runs differ, the resumed one must lie within their difference)."""
    import test_resume_ranks as t
    cuda = lambda out, *extra: [c if c != "cpu" else "cuda" for c in t._train(out, corpus_root, 2, *extra)]
    for name in ("a", "b"):
        t._run(cuda(tmp_path / name))
    rc, log = t._interrupt(cuda(tmp_path / "resumed"), 5, signal.SIGTERM, False)
    assert rc != 0 and "(interrupted)" in log, log[-2000:]
    t._run(cuda(tmp_path / "resumed", "--resume"))
    bpb = {n: json.loads((tmp_path / n / "meta.json").read_text())["int6_roundtrip"]["bpb"]
           for n in ("a", "b", "resumed")}
    print("2-GPU resume, int6 bpb:", bpb)
    if t._sha(tmp_path / "a" / "final_model.pt") == t._sha(tmp_path / "b" / "final_model.pt"):
        assert t._sha(tmp_path / "resumed" / "final_model.pt") == t._sha(tmp_path / "a" / "final_model.pt")
    else:
        assert abs(bpb["resumed"] - bpb["a"]) <= max(abs(bpb["a"] - bpb["b"]) * 3, 1e-4)
