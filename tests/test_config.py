"""One way to resolve a config: profile or file or run folder, then the environment only when asked, then --set."""

import ast
import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from dyneval.config import preset, resolve


def test_the_record_environment_applies_only_when_asked_and_set_overrides_win():
    env = {"SEED": "5", "NUM_LAYERS": "3", "DATA_PATH": "/nowhere"}
    plain = resolve("smoke", environ=None, overrides=["train.seed=42"])
    assert plain.config.train.seed == 42 and plain.config.model.num_layers == preset("smoke").model.num_layers
    asked = resolve("smoke", environ=env, overrides=["train.seed=42"])
    assert asked.config.train.seed == 42  # --set wins over the environment
    assert asked.config.model.num_layers == 3 and asked.config.train.data_path == "/nowhere"
    assert asked.sources["model.num_layers"] == "env NUM_LAYERS" and asked.sources["train.seed"] == "--set"
    assert asked.sources["model.model_dim"] == "profile smoke"


def test_the_config_command_prints_where_each_non_default_value_came_from(tmp_path):
    r = run_cli("config", "--profile", "smoke", "--env", "--set", "eval.tail_lr=0.5", "--sources", env={"NUM_LAYERS": "2"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["config"]["model"]["num_layers"] == 2 and out["config"]["eval"]["tail_lr"] == 0.5
    assert out["sources"]["model.num_layers"] == "env NUM_LAYERS" and out["sources"]["eval.tail_lr"] == "--set"
    quiet = json.loads(run_cli("config", "--profile", "smoke", "--sources", env={"NUM_LAYERS": "2"}).stdout)
    assert quiet["config"]["model"]["num_layers"] == 4 and "model.num_layers" in quiet["sources"]


def test_what_the_config_command_prints_is_accepted_back_by_config(tmp_path):
    """`config > c.json` then `--config c.json` resolves the same config (with `--sources` too, and a meta.json)."""
    plain = run_cli("config", "--profile", "smoke", "--set", "eval.tail_lr=0.25", "--set", "train.iterations=7")
    assert plain.returncode == 0, plain.stderr
    (tmp_path / "c.json").write_text(plain.stdout)
    assert set(json.loads(plain.stdout)) == set(preset("smoke").to_dict())  # the sections, nothing else
    back = run_cli("config", "--config", tmp_path / "c.json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == json.loads(plain.stdout)
    with_sources = run_cli("config", "--profile", "smoke", "--set", "eval.tail_lr=0.25", "--set", "train.iterations=7",
                           "--sources")
    (tmp_path / "s.json").write_text(with_sources.stdout)
    again = run_cli("config", "--config", tmp_path / "s.json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(plain.stdout)
    assert resolve(None, config_file=str(tmp_path / "c.json")).config == preset("smoke").with_overrides(
        ["eval.tail_lr=0.25", "train.iterations=7"])


def test_a_run_folder_meta_is_the_truth_and_only_evaluation_settings_may_be_overridden(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = preset("smoke").with_overrides(["train.seed=7"])
    (run / "meta.json").write_text(json.dumps({"config": cfg.to_dict()}))
    evaluation_only = lambda f: f.startswith("eval.")  # noqa: E731
    r = resolve(None, run_dir=str(run), overrides=["eval.tail_lr=0.1"], environ={"DYNEVAL_LR": "0.5"},
                run_overridable=evaluation_only)
    assert r.config.train.seed == 7 and r.config.eval.tail_lr == 0.1 and r.config.eval.dyneval_lr == 0.5
    assert r.sources["eval.dyneval_lr"] == "env DYNEVAL_LR" and r.sources["train.seed"] == f"run {run}"
    with pytest.raises(ValueError, match="train.seed belongs to the trained model"):  # the environment too
        resolve(None, run_dir=str(run), environ={"SEED": "5"}, run_overridable=evaluation_only)
    with pytest.raises(ValueError, match="belongs to the trained model"):
        resolve(None, run_dir=str(run), overrides=["model.num_layers=2"], run_overridable=lambda f: f.startswith("eval."))
    bad = run_cli("evaluate", "--run-dir", run, "--set", "train.seed=3", "--out", tmp_path / "o")
    assert bad.returncode == 2 and "train.seed belongs to the trained model" in bad.stderr


def test_a_config_file_that_is_not_a_json_object_is_one_line_naming_it(tmp_path):
    f = tmp_path / "c.json"
    f.write_text("[1, 2]")
    r = run_cli("config", "--config", f)
    assert r.returncode == 2 and str(f) in r.stderr and r.stderr.strip().count("\n") == 0


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            start = body[1].lineno if (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                                       and len(body) > 1) else body[0].lineno  # docstrings do not count
            yield node.name, node.end_lineno - start + 1


def test_no_library_function_is_longer_than_about_80_lines_and_only_main_parses_arguments():
    long = [(p.name, name, n) for p in sorted((REPO / "dyneval").glob("*.py")) for name, n in _functions(p) if n > 80]
    assert not long, long
    parsers = [p.name for p in (REPO / "dyneval").glob("*.py") if "argparse" in p.read_text()]
    assert parsers == ["__main__.py"]
