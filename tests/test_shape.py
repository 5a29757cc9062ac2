"""The library's shape, read from the source: the scoring passes share one `Scorer`, every eval knob is defined
once (in `EvalConfig`; the per-algorithm settings are views of it), and no library function takes a bag of
parameters."""

import ast
import dataclasses

import pytest

from conftest import REPO
from dyneval import sections
from dyneval.config import SETTINGS_VIEWS, EvalConfig, RunConfig
from test_layers import LIBRARY

PACKAGE = REPO / "dyneval"
MAX_PARAMETERS = 7  # beyond ~6, a signature is carrying something that should be one object


def _functions(module: str):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
            if names[:1] in (["self"], ["cls"]):
                names = names[1:]
            yield node.name, names


def test_no_scoring_or_adaptation_function_takes_the_stream_and_its_byte_table_apart():
    """`tokens, lut, ranks, autocast` travel as one `evaluate.Scorer` (what is scored, how, on which ranks)."""
    loose = [(m, f, p) for m in ("evaluate", "adapt", "doc_ttt") for f, p in _functions(m)
             if {"tokens", "lut"} <= set(p) or {"ranks", "autocast"} <= set(p)]
    assert not loose, loose


def test_no_library_function_takes_more_than_seven_parameters():
    wide = [(m, f, len(p)) for m in LIBRARY if (PACKAGE / f"{m}.py").is_file() for f, p in _functions(m)
            if len(p) > MAX_PARAMETERS]
    assert not wide, wide


def test_no_settings_view_is_written_out_as_a_class_of_its_own():
    """The views are made from `EvalConfig`'s fields (`sections.settings_view`), so a knob's type, default and
    check live in one place; a hand-written `class TailSettings:` would be a second definition."""
    views = {v.__name__ for v in SETTINGS_VIEWS}
    written = [(p.name, n.name) for p in PACKAGE.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
               if isinstance(n, ast.ClassDef) and n.name in views]
    assert not written, written


@pytest.mark.parametrize("view", SETTINGS_VIEWS, ids=lambda v: v.__name__)
def test_every_settings_view_field_is_one_eval_knob_of_its_type_and_follows_an_override(view):
    knobs = {f.name: f for f in dataclasses.fields(EvalConfig)}
    for f in dataclasses.fields(view):
        if f.name in view.KNOBS:
            assert f.type == knobs[view.KNOBS[f.name]].type, (view.__name__, f.name)
    base = RunConfig()
    for short, knob in view.KNOBS.items():
        old = getattr(base.eval, knob)
        kind = knobs[knob].type
        new = "mlp" if kind == "str" else old + 1 if kind == "int" else old / 2 if old else 0.25
        cfg = base.with_overrides({f"eval.{knob}": str(new)})
        extra = {"ttt": cfg.eval.ttt} if view is sections.ScoreFirstSettings else {}
        assert getattr(cfg.eval.view(view, **extra), short) == new, (view.__name__, short, knob)
