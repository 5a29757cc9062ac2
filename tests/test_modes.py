"""A scoring or adaptation function gives the model back in the training mode it got, even when it fails."""

import pytest
import torch

from dyneval import adapt, evaluate
from dyneval.config import DynamicSettings, Scoring
from dyneval.data import ByteLUT

V = 16


class Failing(torch.nn.Module):
    """A model whose forward raises, as a diverged or mis-shaped model does mid-pass."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise RuntimeError("forward failed")


def _lut():
    return ByteLUT(torch.ones(V, dtype=torch.long), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))


@pytest.mark.parametrize("training", [True, False])
def test_an_exception_inside_a_scoring_pass_leaves_the_model_in_the_mode_it_was_given(training):
    model = Failing().train(training)
    tokens = torch.arange(200) % V
    with pytest.raises(RuntimeError, match="forward failed"):
        evaluate.evaluate_nonoverlap(model, evaluate.Scorer(tokens, _lut(), Scoring(seq_len=32, stride=32, batch_seqs=2)))
    assert model.training is training


def test_an_exception_inside_a_dynamic_eval_step_leaves_the_scoring_model_in_eval_mode():
    hook = adapt.dynamic_hook(DynamicSettings(lr=0.1, adapt_every=1), False, "score_first_ttt+dynamic")
    model = Failing().eval()
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(RuntimeError, match="forward failed"):
        hook(0, x, x, model)
    assert not model.training
