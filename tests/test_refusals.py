"""What the scoring library refuses, in one line, rather than scoring something else: a plan that leaves
targets unscored, a stream that is not one, a document order it does not know, Krause's update without its
statistics; and the passes leave the model in the mode it was given."""

import pytest
import torch

from dyneval import adapt, doc_ttt, evaluate
from dyneval.config import EvalConfig, KrauseSettings, Scoring, ScoreFirstSettings, TTTSettings
from dyneval.data import ByteLUT
from test_doc_ttt import LORA, tiny_model

V = 1024
PLAN = Scoring(seq_len=64, stride=16, batch_seqs=4)
TTT = TTTSettings(lr=1e-3, momentum=0.9, epochs=1, batch_seqs=2, freeze_blocks=1, grad_clip=1.0)


def lut() -> ByteLUT:
    return ByteLUT(torch.ones(V, dtype=torch.long), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))


def tokens(n=400) -> torch.Tensor:
    return torch.randint(4, V, (n,), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("plan, match", [
    (Scoring(seq_len=64, stride=128, batch_seqs=4), "stride=128 exceeds plan.seq_len=64"),
    (Scoring(seq_len=64, stride=0, batch_seqs=4), "plan.stride=0 must be a positive integer"),
    (Scoring(seq_len=64, stride=16, batch_seqs=0), "plan.batch_seqs=0 must be a positive integer"),
])
def test_a_plan_that_cannot_score_every_target_is_refused_in_one_line(plan, match):
    with pytest.raises(ValueError, match=match):
        evaluate.Scorer(tokens(), lut(), plan)


@pytest.mark.parametrize("stream", [torch.tensor([5]), tokens().float(), tokens().view(20, 20)])
def test_a_stream_that_is_not_a_1d_integer_tensor_of_two_ids_or_more_is_refused(stream):
    with pytest.raises(ValueError, match="tokens must be a 1-D integer tensor"):
        evaluate.Scorer(stream, lut(), PLAN)


def test_an_unknown_document_order_is_refused_not_scored_in_a_mixed_order():
    with pytest.raises(ValueError, match="order='bogus' must be one of stream, field"):
        doc_ttt.DocTTT(LORA, None, "bogus")
    with pytest.raises(ValueError, match="order='bogus'"):
        doc_ttt.batches_in_order(doc_ttt.documents(tokens()), 2, "bogus")


@pytest.mark.parametrize("subset, stats", [("all", None), ("lora", None), ("lora", {})])
def test_krause_s_update_without_its_statistics_or_on_adapters_is_refused(subset, stats):
    """Without statistics it was silently plain SGD with decay; on lora, adapters of rank 0: no adaptation."""
    sc = evaluate.Scorer(tokens(), lut(), PLAN)
    k = KrauseSettings(lr=1e-4, decay=0.01, batches=1, subset=subset)
    with pytest.raises(ValueError, match="dynamic_krause: Krause"):
        adapt.adapt_dynamic_tail(tiny_model(), sc, k, rms_stats=stats, name="dynamic_krause")


@pytest.mark.parametrize("training", [True, False])
def test_the_ttt_passes_leave_the_model_in_the_mode_it_was_given(training):
    sc = evaluate.Scorer(tokens(), lut(), PLAN)
    m = tiny_model().train(training)
    adapt.pre_eval_ttt(m, sc, TTT)
    assert m.training is training
    adapt.score_first_ttt(m, sc, ScoreFirstSettings(chunk_tokens=128, ttt=TTT))
    assert m.training is training and all(p.requires_grad for p in m.parameters())


def test_a_view_of_something_that_is_not_a_settings_view_is_a_type_error_naming_the_views():
    with pytest.raises(TypeError, match="dict is not a settings view of EvalConfig: one of Scoring"):
        EvalConfig().view(dict)

