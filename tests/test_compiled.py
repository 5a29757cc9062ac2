"""The compiled paths on the CPU: torch.compile with the aot_eager backend (dynamo's capture, guards and
recompiles as on a GPU, without code generation) on the tiny record-shaped model (XSA on the last layer,
the bigram table, partial RoPE, SmearGate, U-Net skips, tied head; width 64, 3 layers).

Equal to eager bitwise: aot_eager runs the same ATen kernels as eager, forward and backward, so every
comparison here is exact. Graph counts are pinned, so a change that would push the GPU path past dynamo's
recompile limit (into silent eager) or into more compiles fails here."""

import hashlib
import json

import pytest

from conftest import TINY_OVERRIDES, torchrun

COMPILED = ["train.compile=1", "train.compile_backend=aot_eager"]
QAT = ["train.qat_trains=1"]


def _sets(corpus_root, extra=()):
    sets = TINY_OVERRIDES + [f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
                             f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}", *extra]
    return [a for s in sets for a in ("--set", s)]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def eager_qat_run(tmp_path_factory, tiny_cfg):
    """One process, eager, late QAT really training (the flag flips at step 3 of 5)."""
    from dyneval.train import train
    out = tmp_path_factory.mktemp("eager_qat")
    train(tiny_cfg.with_overrides(QAT), out, device="cpu")
    return out


def test_training_compiled_fullgraph_under_ddp_on_two_gloo_processes_equals_eager_with_one_graph_per_shape(
        eager_qat_run, tmp_path, corpus_root):
    """The training step (fullgraph, DDP over 2 gloo processes) and Newton-Schulz compiled: bitwise the
    eager one-process run. No graph is made inside a timed step: the warm-up makes the step's graph, and
    `qat_trains=1` flipping the flag makes exactly one more, outside the clock, with the real micro-batch
    shape (a (1, L) priming batch would leave the real shape to be compiled inside the next timed step)."""
    out = tmp_path / "compiled"
    r = torchrun("-m", "dyneval", "train", "--profile", "smoke", "--out", out, "--device", "cpu",
                 *_sets(corpus_root, COMPILED + QAT), nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["late_qat_step"] is not None and meta["qat_trained"]
    g = meta["graphs"]
    assert g["by_phase"]["timed_steps"] == 0, g
    assert g["by_phase"]["qat_switch"] == 1, g
    assert g["regions"]["train_step"]["graphs"] == 2, g  # the warm-up's, and the fake-quantized one
    # rank 0's share of the Muon matrices (4 shapes of 6); dynamo marks the size dynamic after the first
    # shape, then guards on which side is longer and on sizes of 1
    assert g["regions"]["newton_schulz"]["graphs"] == 4, g
    for name in ("final_model.pt", "final_model.int6.ptz"):
        assert _sha(out / name) == _sha(eager_qat_run / name), name
    assert "recompile_limit" not in r.stderr


def test_the_profiles_compile_on_cuda_only_and_any_device_when_asked(tiny_cfg):
    import torch
    from dyneval.config import preset
    from dyneval.graphs import should_compile
    assert preset("record").train.compile == preset("record").eval.compile == "auto"
    assert preset("record").eval.compile_dynamic == "0" and preset("smoke").train.compile == "0"
    assert preset("record").train.compile_backend == preset("record").eval.compile_backend == "inductor"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [should_compile(s, cpu) for s in ("auto", "1", "0")] == [False, True, False]
    assert [should_compile(s, cuda) for s in ("auto", "1", "0")] == [True, True, False]
    # a config or meta.json written when the field was a bool keeps its meaning
    from dyneval.config import RunConfig
    assert RunConfig.from_dict({"train": {"compile": True}, "eval": {"compile_dynamic": False}}).train.compile == "auto"
    with pytest.raises(ValueError, match="eval.compile: 'yes' is not a compile setting"):
        tiny_cfg.with_overrides(["eval.compile=yes"])
    with pytest.raises(ValueError, match="compile_backend='triton'"):
        tiny_cfg.with_overrides(["eval.compile_backend=triton"])


# Graphs per compiled function of each variant, `evaluate --variants all` in one process in the fast mode
# (every compiled path on). Windows: 64, 5 per batch, so the last batch (4) is ragged: one more graph per
# function that scores. Faithful mode (`eval.compile_dynamic=0`) compiles the same regions minus `dynamic`
# (each variant's regions are its own, so they do not depend on which other variants ran).
GRAPH_BUDGET = {
    "nonoverlap": {"forward": 2},  # 16 sequences of 128: 3 full batches and 1 of 1
    "sliding": {"forward": 2},
    "pre_eval_ttt": {"forward": 2},
    "pre_eval_ttt+nonoverlap": {"forward": 2},
    "pre_eval_ttt+dynamic": {"dynamic": 3},  # train-mode scoring (full, last batch) and the step's (1, L) with grad
    "dynamic": {"dynamic": 3},
    "score_first_ttt": {},  # not compiled (the merged records' TTT ran eagerly)
    "score_first_ttt+dynamic": {},
    "dynamic_tail": {"tail": 4},  # eval-mode scoring (full, last batch) and the step's tail windows with grad
    "dynamic_tail_mlp": {"tail": 4},
    "dynamic_krause": {"tail": 4},
    "doc_score": {"forward": 2},  # sliding windows inside the 3 documents, in batches of 5: full, last
    # the field's per-document TTT (settings below: 2 batches of 2 documents, 2 phases of global SGD):
    # `lora`, the adapter batches' forward in grad mode, whose backward is the adapter step: one graph, as
    # every batch is (doc_batch, eval_seq_len) whatever its documents and chunk
    "doc_lora_ttt": {"lora": 1},
    # `global`, the global SGD (train mode, base weights trainable): a chunk holds 2 or 3 sequences (one
    # more where it crosses a document), dynamic in that count: the first count's graph, then a symbolic one
    "phased_ttt": {"lora": 1, "global": 2},
    "phased_ttt_field": {"lora": 1, "global": 2},
}
# The documents of the tiny stream (1218, 701 and 129 targets) in batches of 2, phases after 1 and 2
# documents, 256-token global chunks: every mechanism of the field's variants runs compiled.
DOC_TTT = ["eval.doc_batch=2", "eval.phased_prefix_docs=2", "eval.phased_num_phases=2", "eval.global_chunk_tokens=256"]


def test_every_variant_compiled_in_one_process_stays_in_its_graph_budget_and_scores_bitwise_as_eager(
        eager_qat_run, tmp_path):
    from conftest import run_cli
    common = ["evaluate", "--run-dir", eager_qat_run, "--variants", "all", "--device", "cpu",
              "--set", "eval.eval_batch_seqs=5", *(a for d in DOC_TTT for a in ("--set", d))]
    r = run_cli(*common, "--out", tmp_path / "eager")
    assert r.returncode == 0, r.stderr[-3000:]
    fast = ["--set", "eval.compile=1", "--set", "eval.compile_dynamic=1", "--set", "eval.compile_backend=aot_eager"]
    c = run_cli(*common, *fast, "--out", tmp_path / "compiled")
    assert c.returncode == 0, c.stderr[-3000:]
    assert "recompile_limit" not in c.stderr + c.stdout, c.stderr[-3000:]
    eager = json.loads((tmp_path / "eager" / "results.json").read_text())
    comp = json.loads((tmp_path / "compiled" / "results.json").read_text())
    assert {n: {k: v["graphs"] for k, v in comp[n]["graphs"].items()} for n in comp} == GRAPH_BUDGET
    for name in GRAPH_BUDGET:
        assert comp[name]["nats"] == eager[name]["nats"] and comp[name]["bytes"] == eager[name]["bytes"], name
        compiled_any = bool(GRAPH_BUDGET[name])
        assert (comp[name]["compile_seconds"] > 0) == compiled_any, name
        assert comp[name]["scoring_seconds"] == pytest.approx(comp[name]["seconds"] - comp[name]["compile_seconds"])
    # the faithful mode (the run scored its dynamic eval eagerly): the same budget without the dynamic regions
    f = run_cli(*common, *fast, "--set", "eval.compile_dynamic=0", "--out", tmp_path / "faithful")
    assert f.returncode == 0, f.stderr[-3000:]
    assert "recompile_limit" not in f.stderr + f.stdout, f.stderr[-3000:]
    faithful = json.loads((tmp_path / "faithful" / "results.json").read_text())
    assert {n: {k: v["graphs"] for k, v in faithful[n]["graphs"].items()} for n in faithful} == {
        n: {k: g for k, g in b.items() if k != "dynamic"} for n, b in GRAPH_BUDGET.items()}
    assert all(faithful[n]["nats"] == eager[n]["nats"] for n in GRAPH_BUDGET)
