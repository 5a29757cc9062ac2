"""The field's per-document adaptations (dyneval/doc_ttt.py) on a tiny random model of the record's shape
(XSA, bigram table, partial RoPE, SmearGate, U-Net skips, tied head) and a synthetic stream of documents."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURE, REPO
from dyneval import data, doc_ttt, legality
from dyneval.config import ModelConfig, Scoring
from dyneval.distributed import Ranks
from dyneval.evaluate import Scorer
from dyneval.model import GPT

SEQ = 64
LORA = doc_ttt.DocLoRASettings(doc_batch=3, chunk=12, rank=4, lr=3e-3, beta1=0.0, beta2=0.999, weight_decay=0.5,
                               seed=0)
PHASES = doc_ttt.GlobalSGDSettings(prefix_docs=6, num_phases=2, lr=3e-3, momentum=0.9, epochs=1, chunk_tokens=40,
                                   grad_clip=1.0)


def scorer(tokens, lut, ranks=Ranks()) -> Scorer:
    """`tokens` scored in SEQ-token windows, stride 16 inside long documents, 4 windows per batch."""
    return Scorer(tokens, lut, Scoring(seq_len=SEQ, stride=16, batch_seqs=4), ranks)


def ttt(phases=None, order="stream"):
    return doc_ttt.DocTTT(LORA, phases, order)


def tiny_model() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=3, model_dim=64, num_heads=2, num_kv_heads=1, bigram_vocab_size=64, bigram_dim=16,
                      xsa_last_n=1, rope_dims=8)
    m = GPT(cfg)
    with torch.no_grad():  # the zero-initialised projections too, so every adapter gets a gradient
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def stream(n=700, num_docs=11, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(4, 1024, (n + 1,), generator=g)
    t[0] = data.BOS_ID
    t[torch.randperm(n - 2, generator=g)[: num_docs - 1] + 1] = data.BOS_ID
    return t


@pytest.fixture(scope="module")
def lut():
    return data.build_byte_lut(FIXTURE / "tokenizer.model", 1024)


def doc_rows(rows: dict, span) -> dict:
    sel = (rows["first_scored"] >= span[0]) & (rows["first_scored"] < span[1])
    return {k: v[sel] for k, v in rows.items() if k != "rank"}


def test_documents_run_from_their_bos_to_the_next_bos_which_is_their_last_target():
    t = torch.tensor([1, 5, 6, 1, 7, 1, 8, 9, 10])
    assert doc_ttt.documents(t).tolist() == [[0, 3], [3, 5], [5, 8]]
    assert doc_ttt.documents(torch.tensor([5, 6, 1, 7, 8])).tolist() == [[0, 2], [2, 4]]  # no BOS first: 0 opens one


def test_doc_windows_score_every_target_of_a_document_once_within_it():
    w = doc_ttt.doc_windows(10, 10 + 150, SEQ, 16)
    scored = np.concatenate([np.arange(s + f, s + n) for s, n, f in zip(w.starts, w.lengths, w.score_from)])
    assert np.array_equal(scored, np.arange(10, 160)) and (w.starts >= 10).all() and (w.lengths <= SEQ).all()


def test_the_lora_forward_with_fresh_adapters_is_the_model_bitwise():
    m = tiny_model().eval()
    x = stream()[: 2 * SEQ].view(2, SEQ)
    lora = doc_ttt.BatchedLoRA(m, [0, 37], 4, 0)
    with torch.no_grad():
        assert torch.equal(m.logits(x, adapter=lora), m.logits(x))


def test_doc_score_of_a_document_does_not_see_any_other_document(lut):
    """Attention, SmearGate and the bigram table: replacing every other document's tokens leaves a
    document's scores unchanged (its first window starts at its BOS, position 0 has no predecessor)."""
    m = tiny_model()
    t = stream()
    spans = doc_ttt.documents(t)
    lo, hi = (int(v) for v in spans[4])
    other = stream(seed=1)
    other[lo:hi + 1] = t[lo:hi + 1]  # same document 4 (and the BOS ending it), everything else different
    a = doc_ttt.evaluate_doc_score(m, scorer(t, lut))
    b = doc_ttt.evaluate_doc_score(m, scorer(other, lut))
    ra, rb = doc_rows(a.stream, (lo, hi)), doc_rows(b.stream, (lo, hi))
    assert len(ra["nats"]) and all(np.array_equal(ra[k], rb[k]) for k in ra)
    assert a.tokens == t.numel() - 1  # every target once


def test_a_document_scored_alone_equals_it_scored_inside_a_batch_of_others_and_adapters_do_not_carry(lut):
    m = tiny_model()
    t = stream()
    for p in m.parameters():
        p.requires_grad_(False)
    spans = [tuple(int(v) for v in s) for s in doc_ttt.documents(t)]
    sc = scorer(t, lut)
    alone = doc_ttt.lora_batch(m, sc, [spans[5]], LORA, 0)
    inside = doc_ttt.lora_batch(m, sc, [spans[2], spans[5], spans[9]], LORA, 0)
    after = doc_ttt.lora_batch(m, sc, [spans[7], spans[3], spans[5]], LORA, 0)
    a, b, c = (doc_rows(r, spans[5]) for r in (alone, inside, after))
    assert len(a["nats"]) >= 3  # several chunks: the adapters stepped
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-12, atol=0) and np.allclose(a[k], c[k], rtol=1e-12, atol=0), k
    # across batches: the whole stream in batches of 3 scores each document as alone (fresh adapters per batch)
    whole = doc_ttt.doc_lora_ttt(m, sc, ttt()).stream
    for s in (spans[0], spans[5], spans[-1]):
        one = doc_rows(doc_ttt.lora_batch(m, sc, [s], LORA, 0), s)
        assert np.allclose(doc_rows(whole, s)["nats"], one["nats"], rtol=1e-12, atol=0)
    # and the adaptation does something: later chunks differ from scoring with frozen fresh adapters
    frozen = doc_rows(doc_ttt.lora_batch(m, sc, [spans[5]], dataclasses.replace(LORA, lr=0.0), 0), spans[5])
    assert frozen["nats"][0] == a["nats"][0] and not np.array_equal(frozen["nats"][1:], a["nats"][1:])


@pytest.mark.parametrize("order", ["stream", "field"])
def test_phased_ttt_changes_the_base_weights_at_every_phase_with_real_sgd_steps(lut, order):
    m = tiny_model()
    res = doc_ttt.doc_lora_ttt(m, scorer(stream(), lut), ttt(PHASES, order))
    log = res.notes
    assert [p["documents"] for p in log["phases"]] == [3, 6]
    assert all(p["steps"] >= 1 and p["weight_change"] > 0 for p in log["phases"]), log
    assert res.tokens == 700


def _legality(name, order, phases, lut):
    t = stream(n=900, num_docs=14)
    m0 = tiny_model()

    def run(toks, cache):
        m = tiny_model()
        m.load_state_dict(m0.state_dict())
        return doc_ttt.doc_lora_ttt(m, scorer(toks, lut), ttt(phases, order), name=name)
    return legality.check_variant(name, True, "", run, t, [451, 613], 1024)


@pytest.mark.parametrize("name, order, phases", [("doc_lora_ttt", "stream", None), ("phased_ttt", "stream", PHASES)])
def test_doc_lora_ttt_and_phased_ttt_in_stream_order_are_prefix_invariant(lut, name, order, phases):
    v = _legality(name, order, phases, lut)
    assert v.invariant and v.conclusive and v.ok, v.line()


def test_phased_ttt_in_the_records_order_fails_prefix_invariance_and_is_shown_not_failed(lut):
    """Its batches are sorted by length, so the documents after P decide which documents come first."""
    v = _legality("phased_ttt_field", "field", PHASES, lut)
    assert not v.invariant, v.line()
    v.prefix_rule = False  # the registry's mark: score-before-update only
    assert v.ok and "marked legal: score-before-update only" in v.line()
    from dyneval.variants import VARIANTS
    assert VARIANTS["phased_ttt_field"].rule != "both" and VARIANTS["phased_ttt"].rule == "both"


RANK_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from test_doc_ttt import tiny_model, stream, scorer, ttt, PHASES
from dyneval import data, doc_ttt, distributed
from dyneval.distributed import Ranks
ctx = distributed.init_context("cpu")
lut = data.build_byte_lut({tok!r}, 1024)
out = {{}}
for name, ph in (("lora", None), ("phased", PHASES)):
    r = doc_ttt.doc_lora_ttt(tiny_model(), scorer(stream(), lut, Ranks.current({virtual})), ttt(ph))
    out[name] = r.stream["nats"]
if ctx.is_main:
    np.savez({path!r}, **out)
distributed.teardown()
"""


def test_two_gloo_ranks_equal_two_virtual_ranks_on_doc_lora_ttt_and_phased_ttt(tmp_path, lut):
    """11 documents in batches of 3: 4 batches, two per rank; phased global SGD all-reduced."""
    paths = {}
    for kind, cmd, virtual in (("real", ["-m", "torch.distributed.run", "--nproc_per_node=2"], None),
                               ("virtual", [], 2)):
        paths[kind] = tmp_path / f"{kind}.npz"
        script = tmp_path / f"{kind}.py"
        script.write_text(RANK_SCRIPT.format(tests=str(REPO / "tests"), tok=str(FIXTURE / "tokenizer.model"),
                                             virtual=virtual, path=str(paths[kind])))
        r = subprocess.run([sys.executable, *cmd, str(script)], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
    real, virtual = np.load(paths["real"]), np.load(paths["virtual"])
    assert np.array_equal(real["lora"], virtual["lora"])
    assert np.allclose(real["phased"], virtual["phased"], rtol=1e-7, atol=0)
    # one rank scores the same documents the same way; this process runs 2 threads, the subprocesses 1 (other
    # kernels), so to float tolerance
    one = doc_ttt.doc_lora_ttt(tiny_model(), scorer(stream(), lut), ttt())
    assert np.allclose(np.sort(one.stream["nats"]), np.sort(real["lora"]), rtol=1e-6, atol=0)
