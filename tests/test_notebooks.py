"""Notebooks: stripped and paired in git, plain parameters, and the papermill reproduction end to end."""

import json
import math
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_five_pipeline_notebooks_and_the_sweep_each_paired_with_a_py_percent_file():
    assert [p.stem for p in NOTEBOOKS] == ["01_data", "02_train", "03_quantize", "04_evaluate", "05_report", "06_sweep"]
    import jupytext
    for nb_path in NOTEBOOKS:
        nb = jupytext.read(nb_path)
        py = jupytext.read(nb_path.with_suffix(".py"))
        assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in py.cells], nb_path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_stripped_and_run_on_the_python3_kernel(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, path.name
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_has_one_parameters_cell_of_plain_typed_values(path):
    import papermill
    params = papermill.inspect_notebook(str(path))
    tagged = [c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    assert all(p["inferred_type_name"] in ("str", "int", "float") and p["help"] for p in params.values()), params
    if path.stem not in ("05_report", "06_sweep"):
        from dyneval.notebook import EXPORT_PARAMETERS, PARAMETERS
        assert set(params) == set(PARAMETERS) | (set(EXPORT_PARAMETERS) if path.stem == "03_quantize" else set())


def test_unknown_or_mistyped_notebook_parameters_are_refused():
    from dyneval.notebook import check_parameters
    with pytest.raises(ValueError, match="unknown notebook parameter"):
        check_parameters({"sead": 1})
    with pytest.raises(ValueError, match="seed='x' is not a valid int"):
        check_parameters({"seed": "x"})


QUICK = ["model.num_layers=3", "model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1",
         "model.xsa_last_n=1", "model.rope_dims=8", "train.iterations=6", "train.train_batch_tokens=2048",
         "train.train_seq_len=128", "train.val_loss_every=3", "train.max_val_tokens=4097", "train.checkpoint_every=3",
         "eval.eval_seq_len=128", "eval.eval_stride=32", "eval.max_val_tokens=4097", "eval.ttt_chunk_tokens=1024",
         "eval.ttt_epochs=1", "eval.ttt_batch_seqs=4", "eval.krause_batches=1"]


def test_smoke_reproduction_through_papermill_survives_a_failed_seed_and_reports_finite_numbers(corpus_root, tmp_path):
    from dyneval.reproduce import Reproduction, reproduce
    out, figs = tmp_path / "runs", tmp_path / "figures"
    asked = Reproduction(profile="smoke", seeds=[42, 7], out=out, overrides=QUICK,
                         seed_overrides={7: ["train.iterations=abc"]}, figures=figs, timeout=900,
                         data_root=str(corpus_root))
    s = reproduce(asked, log=lambda *_: None)
    assert s["done"] == [42] and list(s["failed"]) == [7] and "not a valid int" in s["failed"][7]
    assert (out / "seed42" / "notebooks" / "04_evaluate.ipynb").is_file()
    assert (out / "seed7" / "FAILED.json").is_file() and (out / "seed7" / "notebooks" / "01_data.ipynb").is_file()
    table = (figs / "ablation.md").read_text()
    assert "seed 7" in table and "not a valid int" in table  # the failure is shown in the report
    rows = [l for l in (figs / "ablation.csv").read_text().splitlines()[1:]]
    assert len(rows) >= 11
    for line in rows:
        bpb = float(line.split(",")[2])
        assert math.isfinite(bpb) and 0 < bpb < 20
    for name in ("cumulative_bpb", "delta_per_chunk", "per_document_gain", "training_curves", "eval_budget"):
        for ext in ("png", "svg"):
            assert (figs / f"{name}.{ext}").stat().st_size > 5000
    svg = (figs / "cumulative_bpb.svg").read_text()
    assert "<dc:date>" not in svg
    # a second call skips the complete seed and runs only the failed one again
    again = reproduce(asked, log=lambda *_: None)
    assert again["skipped"] == [42] and list(again["failed"]) == [7]


def _tiny_session_config(corpus_root, seed=42):
    from dyneval import notebook
    return notebook.make_config("smoke", seed, ", ".join(QUICK), str(corpus_root))


def test_a_notebook_stage_trains_its_own_config_whatever_the_kernel_environment_says(corpus_root, tmp_path,
                                                                                       monkeypatch):
    from dyneval import notebook
    monkeypatch.setenv("SEED", "5")
    monkeypatch.setenv("DATA_PATH", "/nowhere")
    cfg = _tiny_session_config(corpus_root)
    meta = notebook.train_stage(cfg, tmp_path / "run", log=lambda *_: None)
    assert meta["config"] == cfg.to_dict() and meta["config"]["train"]["seed"] == 42
    said = []
    again = notebook.train_stage(cfg, tmp_path / "run", log=said.append)
    assert again == meta and any("training skipped" in s for s in said)


def test_notebook_03_requantizes_a_run_with_other_settings_and_shows_the_change(corpus_root, tmp_path):
    import papermill
    from dyneval import notebook
    cfg = _tiny_session_config(corpus_root)
    run = tmp_path / "run"
    meta = notebook.train_stage(cfg, run, log=lambda *_: None)
    params = {"profile": "smoke", "seed": 42, "run_dir": str(run), "overrides": ", ".join(QUICK),
              "data_root": str(corpus_root), "clip_quantile": 0.99, "bits": 5, "passthrough_max_numel": 1024}
    out = tmp_path / "03.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "03_quantize.ipynb"), str(out), parameters=params,
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    exported = json.loads((run / "export.json").read_text())
    # the tiny model's tensors are all under the run's 65,536-value passthrough: quantize them by lowering it
    assert exported["settings"] == {"bits": 5, "clip_quantile": 0.99, "passthrough_max_numel": 1024}
    assert exported["size"]["model_bytes"] < meta["size"]["model_bytes"]  # int5 / int8 instead of fp16
    assert exported["roundtrip"]["bpb"] != meta["int6_roundtrip"]["bpb"] and "int6_roundtrip" not in exported
    assert exported["bits"] == 5 and exported["artifact"] == "final_model.int5.ptz"  # a name that says its bits
    text = out.read_text()
    assert "this export" in text and "training's export (the run's settings)" in text


def test_notebook_06_sweeps_a_run_on_its_tuning_stream_and_shows_the_heatmap(corpus_root, tmp_path):
    import papermill
    from dyneval import notebook
    cfg = _tiny_session_config(corpus_root)
    run = tmp_path / "run"
    notebook.train_stage(cfg, run, log=lambda *_: None)
    out = tmp_path / "06.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "06_sweep.ipynb"), str(out), kernel_name="python3",
                               parameters={"run_dir": str(run), "variant": "dynamic_tail",
                                           "grids": "eval.tail_lr=0.01,0.1", "out": str(tmp_path / "sweep")},
                               cwd=str(tmp_path), progress_bar=False)
    rep = json.loads((tmp_path / "sweep" / "sweep_dynamic_tail.json").read_text())
    assert [e["setting"] for e in rep["tuning"]] == [{"eval.tail_lr": 0.01}, {"eval.tail_lr": 0.1}]
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure inline
    assert any("(choice)" in "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)


def test_notebook_launches_start_the_profiles_process_count_capped_by_the_gpus(monkeypatch):
    import torch
    from dyneval import notebook
    from dyneval.config import preset
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert notebook.num_processes(preset("record_1gpu")) == 1
    assert notebook.num_processes(preset("record")) == 8
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert notebook.num_processes(preset("record")) == 2  # a divisor of the 8-way accumulation
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert notebook.num_processes(preset("record")) == 1


def _record_notebooks(monkeypatch):
    from dyneval import reproduce as reproduce_module

    calls = []
    monkeypatch.setattr(reproduce_module, "run_notebook", lambda name, out_dir, params, *a: calls.append((name, params)))
    return calls


def test_reproduce_and_report_with_another_out_write_their_tables_there_and_leave_the_committed_figures(
        tmp_path, monkeypatch):
    """`--out X` alone never writes into the project's figures/; only an explicit `--figures` does."""
    import subprocess

    from dyneval.__main__ import main

    def project_figures():
        return subprocess.run(["git", "status", "--porcelain", "--", "figures"], cwd=REPO, capture_output=True,
                              text=True).stdout

    before = project_figures()
    calls = _record_notebooks(monkeypatch)
    monkeypatch.chdir(REPO)
    assert main(["reproduce", "--profile", "smoke", "--seeds", "42", "--out", str(tmp_path / "x")]) == 0
    assert calls[-1] == ("05_report", {"runs_root": str(tmp_path / "x"), "figures_dir": str(tmp_path / "x" / "figures")})
    calls.clear()
    assert main(["reproduce", "--profile", "smoke", "--seeds", "42", "--out", str(tmp_path / "x"),
                 "--figures", str(tmp_path / "elsewhere")]) == 0
    assert calls[-1][1]["figures_dir"] == str(tmp_path / "elsewhere")
    # the report command likewise: <runs>/figures by default
    from dyneval import report as report_module

    asked = []
    monkeypatch.setattr(report_module, "build_report", lambda runs, figures: asked.append((runs, figures)) or
                        {"seeds": [], "failed": [], "tables": [], "figures": []})
    assert main(["report", "--runs", str(tmp_path / "x")]) == 0
    assert Path(asked[-1][1]) == tmp_path / "x" / "figures"
    assert project_figures() == before


def test_notebook_04_takes_every_variant_description_from_the_registry_and_states_no_chunk_size_of_its_own():
    """04 once carried a third copy of the variants' descriptions, saying "32k-token chunk" where the smoke
    profile scores 4,096-token chunks: the descriptions come from `variants.VARIANTS`, the sizes from the config."""
    import re

    from dyneval.variants import VARIANTS
    text = (REPO / "notebooks" / "04_evaluate.py").read_text()
    sizes = re.findall(r"\d[\d,]*\s*k?-?\s*tokens?[ -]chunk|chunks? of \d[\d,]*\s*k?", text, flags=re.I)
    assert not sizes, f"04 states chunk sizes of its own: {sizes} (take them from run.cfg.eval)"
    copied = [name for name in VARIANTS if re.search(rf"^#\s*\|\s*`{re.escape(name)}`", text, flags=re.M)]
    assert not copied, f"04 has a table of its own for {copied}: show variants.VARIANTS instead"
    assert "VARIANTS" in text and "ttt_chunk_tokens" in text


def test_the_artifact_budget_02_shows_stores_each_tensor_as_the_exporter_does():
    """preview.stored_bytes mirrors quant.quantize_state_dict tensor by tensor: the same treatment, the same bytes."""
    from dyneval import preview, quant
    from dyneval.model import GPT
    from dyneval.notebook import make_config
    cfg = make_config("smoke", 42, ", ".join(QUICK), "data")
    for threshold in (0, 64):  # 0: vectors quantized too (an int8 vector's scale is fp32)
        settings = quant.QuantSettings(passthrough_max_numel=threshold)
        tensors, meta = quant.quantize_state_dict(GPT(cfg.model).state_dict(), settings)
        rows = preview.stored_bytes(cfg, settings)
        assert sum(r["stored_bytes"] for r in rows) == sum(t.numel() * t.element_size() for t in tensors.values())
    kinds = {r["treatment"].split(" ")[0]: r["tensors"] for r in rows}
    exported = {}
    for m in meta.values():
        kind = {"passthrough": "passthrough", "passthrough_ctrl": "control"}.get(m, None) if isinstance(m, str) else m["type"]
        exported[kind] = exported.get(kind, 0) + 1
    assert kinds == exported and len(kinds) == 4, (kinds, exported)
    budget = preview.artifact_budget(preview_cfg := make_config("record", 42, "", "data"))
    assert sum(g["params"] for g in preview.parameter_groups(preview_cfg)) == sum(r["params"] for r in budget["rows"])


def test_the_schedules_02_draws_before_training_are_the_ones_training_follows(corpus_root, tmp_path):
    from dyneval import notebook, preview
    cfg = _tiny_session_config(corpus_root)
    meta = notebook.train_stage(cfg, tmp_path / "run", log=lambda *_: None)
    s = preview.training_schedule(cfg)
    assert meta["late_qat_step"] == s["qat_step"] is not None
    logged = meta["history"]["train"]  # "step" counts steps done: the lr of step k was set before it, at index k-1
    assert [h["lr_scale"] for h in logged] == [s["lr_scale"][h["step"] - 1] for h in logged]
    assert len(s["steps"]) == cfg.train.iterations == meta["steps"]


def test_notebook_05_with_no_finished_seed_says_so_instead_of_failing_on_its_first_figure(tmp_path):
    # A reproduction whose every seed failed (a cell timeout under load, say) ran 05 last and ended in a
    # FileNotFoundError on a figure never drawn (5c06bed) or a StopIteration in cumulative_data (0be3d3e).
    import papermill
    runs = tmp_path / "runs"
    (runs / "seed42").mkdir(parents=True)
    (runs / "seed42" / "FAILED.json").write_text(json.dumps({"seed": 42, "error": "CellTimeoutError: 3600 s",
                                                             "overrides": []}))
    out = tmp_path / "05.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "05_report.ipynb"), str(out), kernel_name="python3",
                               parameters={"runs_root": str(runs), "figures_dir": str(tmp_path / "figures")},
                               cwd=str(tmp_path), progress_bar=False)
    text = out.read_text()
    assert "finished**: there is nothing to draw" in text and "CellTimeoutError" in text
    assert not list((tmp_path / "figures").glob("*.png"))
