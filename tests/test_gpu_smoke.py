"""The gpu_smoke profile: the record's model and numerics on the embedded corpus, run shrunk on the CPU."""

import json

import pytest

from conftest import TINY_OVERRIDES, run_cli


def test_gpu_smoke_is_the_record_model_and_evaluation_on_the_embedded_corpus():
    from dyneval.config import preset
    g, r = preset("gpu_smoke"), preset("record")
    assert g.model == r.model and g.optim.matrix_lr == r.optim.matrix_lr and g.nproc == 1
    assert g.eval == r.eval  # the run's evaluation settings, all validation tokens
    assert (g.train.train_seq_len, g.train.compile, g.train.cudnn_attention, g.train.grad_accum_total) == (2048, "auto",
                                                                                                            False, 8)
    assert g.train.train_batch_tokens * g.train.iterations < 100_000_000  # ~2 min on one H100, not 10
    assert g.train.data_path.endswith("embedded_sp1024") and g.train.tokenizer_path.endswith("embedded_1024_bpe.model")


def test_notebooks_map_both_smoke_profiles_to_the_embedded_corpus(tmp_path):
    from dyneval.notebook import dataset_paths
    for profile in ("smoke", "gpu_smoke"):
        paths = dataset_paths(profile, tmp_path)
        assert paths["train.data_path"] == str(tmp_path / "datasets" / "embedded_sp1024")
        assert paths["train.tokenizer_path"] == str(tmp_path / "tokenizers" / "embedded_1024_bpe.model")
    assert dataset_paths("record_1gpu", tmp_path)["train.data_path"] == str(tmp_path / "datasets" / "fineweb10B_sp1024")


def _sets(corpus_root):
    sets = TINY_OVERRIDES + [f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
                             f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}",
                             "train.max_val_tokens=1025", "eval.max_val_tokens=1025"]  # 8 sequences: seconds
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def tiny_gpu_smoke_run(tmp_path_factory, corpus_root):
    run = tmp_path_factory.mktemp("gpu_smoke") / "run"
    r = run_cli("train", "--profile", "gpu_smoke", "--out", run, "--device", "cpu", *_sets(corpus_root))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return run


def test_gpu_smoke_shrunk_by_overrides_trains_and_evaluates_every_variant_on_the_cpu(tiny_gpu_smoke_run):
    run = tiny_gpu_smoke_run
    assert json.loads((run / "meta.json").read_text())["config"]["train"]["grad_accum_total"] == 2
    r = run_cli("evaluate", "--run-dir", run, "--variants", "all", "--out", run / "eval", "--device", "cpu")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((run / "eval" / "results.json").read_text())
    from dyneval.variants import VARIANTS
    assert set(results) == set(VARIANTS) and all(0 < e["bpb"] < 20 for e in results.values())


def test_bench_compare_prints_faithful_and_fast_figures_with_their_ratios(tiny_gpu_smoke_run, corpus_root):
    """On the CPU with eval.compile=1 and aot_eager, the compiled side really compiles (dynamo's capture and
    guards, no code generation), so compiled == eager is a check, not two eager runs."""
    r = run_cli("bench", "compare", "--profile", "gpu_smoke", "--device", "cpu", "--steps", "1", "--windows", "8",
                "--checkpoint-run", tiny_gpu_smoke_run, *_sets(corpus_root),
                "--set", "eval.compile=1", "--set", "eval.compile_backend=aot_eager")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["train"]["faithful"]["tokens_per_s_per_gpu"] > 0 and out["train"]["ratio_tokens_per_s"] > 0
    assert out["sliding"]["ratio_windows_per_s"] > 0 and out["dynamic"]["ratio_windows_per_s"] > 0
    assert not out["dynamic"]["faithful"]["compiled_dynamic"]  # the run scored its dynamic eval eagerly
    assert out["dynamic"]["fast"]["compiled"] and out["sliding"]["faithful"]["compiled"]  # eval.compile=1
    c = out["dynamic_compiled_vs_eager"]
    assert c["compiled"]["compiled"] and not c["eager"]["compiled"]
    assert c["bpb_compiled_minus_eager"] == 0.0  # aot_eager runs the same kernels as eager: the same bits
    assert "train tokens/s:" in r.stdout and "dynamic eval bpb on" in r.stdout
