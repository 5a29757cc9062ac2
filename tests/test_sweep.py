"""`python -m dyneval sweep` and its tuning stream: held out of training and validation, on both datasets."""

import json
import shutil

import numpy as np
import pytest

from conftest import one_line_error, run_cli
from dyneval import corpus, data
from dyneval.config import preset


def documents(tokens) -> set[bytes]:
    """The BOS-delimited documents of a stream, as byte strings (the partial first/last ones included)."""
    tokens = np.asarray(tokens, dtype=np.uint16)
    starts = np.flatnonzero(tokens == data.BOS_ID)
    return {tokens[a:b].tobytes() for a, b in zip(starts, list(starts[1:]) + [tokens.size])}


def split_tokens(root, split) -> np.ndarray:
    ds = root / "datasets" / "embedded_sp1024"
    return np.concatenate([np.asarray(data.read_shard(f)) for f in data.shard_files(str(ds / f"fineweb_{split}_*.bin"))])


# ----------------------------------------------------------------------------------------------
# The embedded corpus's tune split

def test_the_tune_split_is_whole_documents_that_occur_neither_in_train_nor_in_val(corpus_root):
    tune, train, val = (split_tokens(corpus_root, s) for s in ("tune", "train", "val"))
    manifest = json.loads((corpus_root / "datasets" / "embedded_sp1024" / "manifest.json").read_text())
    assert tune[0] == data.BOS_ID and (tune == data.BOS_ID).sum() == manifest["docs"]["tune"] > 0
    assert manifest["tokens"]["tune"] == tune.size and 20_000 < tune.size < 2 * manifest["tokens"]["val"]
    tune_docs = documents(tune)
    assert len(tune_docs) == manifest["docs"]["tune"]
    assert not tune_docs & documents(train) and not tune_docs & documents(val)
    # the training glob never matches it
    assert not [f for f in data.shard_files(data.train_pattern(corpus_root / "datasets" / "embedded_sp1024"))
                if "tune" in f.name]


def test_the_tune_documents_are_held_out_of_the_tokenizer_and_val_keeps_its_documents(monkeypatch, tmp_path):
    """The split is by whole documents (texts disjoint), val is still the first 5%, and the tokenizer is trained
    on the train documents only (a spy stops the build right after the tokenizer is asked for)."""
    docs = corpus.embedded_documents()
    val, tune, train = corpus.split_documents(docs)
    assert val == docs[: int(len(docs) * corpus.EMBEDDED_VAL_FRACTION)]
    assert not set(tune) & set(train) and not set(tune) & set(val) and len(val) + len(tune) + len(train) == len(docs)
    seen = {}

    class Stop(Exception):
        pass

    def spy(tok_docs, path):
        seen["docs"] = tok_docs
        raise Stop

    monkeypatch.setattr(corpus, "_train_tokenizer", spy)
    monkeypatch.setattr(corpus, "embedded_documents", lambda: docs)
    with pytest.raises(Stop):
        corpus.build_embedded(tmp_path, force=True, log=lambda *_: None)
    assert seen["docs"] == train


def test_the_smoke_trainings_whole_stream_wraps_the_train_split_and_never_holds_a_tune_document(corpus_root):
    tc = preset("smoke").train
    consumed = tc.iterations * data.tokens_per_step(tc.train_batch_tokens, tc.grad_accum_total)
    train = split_tokens(corpus_root, "train")
    assert consumed > train.size  # it wraps: nothing of the train split is unseen
    stream = data.TokenStream(data.train_pattern(corpus_root / "datasets" / "embedded_sp1024"))
    taken = stream.take(consumed).numpy().astype(np.uint16)
    assert not documents(taken) & documents(split_tokens(corpus_root, "tune"))
    assert not documents(taken) & documents(split_tokens(corpus_root, "val"))


# ----------------------------------------------------------------------------------------------
# FineWeb: the last train shard

def fineweb_folder(path, n=80, tokens=100_000_000):
    """80 shards of the export's size as sparse files (headers real, bodies holes): no disk, real sizes."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        header = np.zeros(data.HEADER_WORDS, dtype="<i4")
        header[:3] = [data.SHARD_MAGIC, data.SHARD_VERSION, tokens]
        with open(path / f"fineweb_train_{i:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            f.truncate(data.HEADER_BYTES + 2 * tokens)
    return path


def test_at_the_records_step_count_the_training_loader_never_reaches_the_tuning_shard(tmp_path):
    folder = fineweb_folder(tmp_path / "fw")
    sizes = [data.read_header(f) for f in data.shard_files(data.train_pattern(folder))]
    tc = preset("record_1gpu").train
    assert tc.iterations == 5604 and tc.train_batch_tokens == 786_432
    consumed = tc.iterations * data.tokens_per_step(tc.train_batch_tokens, tc.grad_accum_total)
    assert consumed == 4_407_209_760  # 5,604 x (786,432 + 8)
    opened = data.shards_read(sizes, consumed)
    assert opened == 45 and data.FINEWEB_TUNE_SHARD == f"fineweb_train_{len(sizes) - 1:06d}.bin"
    data.check_tune_unread(data.train_pattern(folder), tc.iterations,
                           data.tokens_per_step(tc.train_batch_tokens, tc.grad_accum_total), capped=False)
    # the record's 8-GPU preset: at most `iterations` steps under its 600 s cap, still short of the last shard
    rc = preset("record").train
    assert data.shards_read(sizes, rc.iterations * data.tokens_per_step(rc.train_batch_tokens, 8)) < 80


def test_a_config_that_would_read_the_tuning_shard_is_refused_or_warned_about_under_a_wall_clock_cap(tmp_path):
    folder = fineweb_folder(tmp_path / "fw")
    step = data.tokens_per_step(786_432, 8)
    steps = 7_900_000_000 // step + 1  # the first step that opens shard 79
    with pytest.raises(ValueError, match=r"fineweb_train_000079\.bin: .* would reach the tuning shard"):
        data.check_tune_unread(data.train_pattern(folder), steps, step, capped=False)
    data.check_tune_unread(data.train_pattern(folder), steps - 1, step, capped=False)
    said = []
    data.check_tune_unread(data.train_pattern(folder), steps, step, capped=True, log=said.append)
    assert len(said) == 1 and said[0].startswith("warning: ") and "fineweb_train_000079.bin" in said[0]


def test_the_training_stream_refuses_to_open_the_tuning_shard_when_it_gets_there(tmp_path):
    """Only shards 0 and 79 downloaded: the stream would reach 79 after shard 0, and refuses instead."""
    data.write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(100) % 1024)
    data.write_shard(tmp_path / data.FINEWEB_TUNE_SHARD, np.arange(100) % 1024)
    stream = data.TokenStream(data.train_pattern(tmp_path))
    stream.take(100)
    with pytest.raises(data.ShardError, match=r"fineweb_train_000079\.bin: the training stream reached the tuning shard"):
        stream.take(1)
    assert data.tune_pattern(tmp_path).endswith(data.FINEWEB_TUNE_SHARD)


def test_the_downloader_fetches_the_tuning_shard_with_tune(tmp_path, fixture_dir):
    from test_data import StandInHub

    hub = StandInHub(tmp_path / "hub", n_train=80, tokenizer=fixture_dir / "tokenizer.model")
    got = corpus.download_fineweb(tmp_path / "data", train_shards=2, fetch=hub.fetch, log=lambda *_: None, tune=True)
    assert hub.calls[-1] == f"datasets/fineweb10B_sp1024/{data.FINEWEB_TUNE_SHARD}" and got["tune_shard"]
    assert len([c for c in hub.calls if "train_" in c]) == 3
    small = StandInHub(tmp_path / "hub4", n_train=4, tokenizer=fixture_dir / "tokenizer.model")
    with pytest.raises(ValueError, match="lists only 4 train shards, so it has no fineweb_train_000079.bin"):
        corpus.download_fineweb(tmp_path / "d4", train_shards=1, fetch=small.fetch, log=lambda *_: None, tune=True)


# ----------------------------------------------------------------------------------------------
# The sweep

def test_a_sweep_tunes_on_the_tune_split_chooses_the_lowest_and_scores_validation_only_for_choice_and_default(
        tiny_run, tmp_path):
    r = run_cli("sweep", "--run-dir", tiny_run, "--variant", "dynamic_tail", "--grid", "eval.tail_lr=0.01,0.1",
                "--grid", "tail_subset=all,mlp", "--out", tmp_path, "--device", "cpu")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "sweep_dynamic_tail.json").read_text())
    assert rep["grid"] == {"eval.tail_lr": [0.01, 0.1], "eval.tail_subset": ["all", "mlp"]}
    assert [e["setting"] for e in rep["tuning"]] == [
        {"eval.tail_lr": a, "eval.tail_subset": b} for a in (0.01, 0.1) for b in ("all", "mlp")]
    best = min(rep["tuning"], key=lambda e: e["bpb"])
    assert rep["choice"] == {"setting": best["setting"], "tune_bpb": best["bpb"]}
    assert rep["tune_stream"]["files"] == ["fineweb_tune_000000.bin"] and rep["tune_stream"]["targets"] == 2048
    assert rep["validation_stream"]["targets"] == 2048
    assert rep["default"] == {"eval.tail_lr": preset("smoke").eval.tail_lr, "eval.tail_subset": "all"}  # the run's
    v = rep["validation"]
    assert v["delta_vs_sliding"]["choice"] == pytest.approx(v["choice"]["bpb"] - v["sliding"]["bpb"])
    assert v["choice_is_default"] == (rep["choice"]["setting"] == rep["default"])
    assert v["choice_is_default"] or v["default"]["bpb"] != v["choice"]["bpb"]
    # the tuning scores are not validation's: the same setting scores differently on the two streams
    assert all(e["bpb"] != v["choice"]["bpb"] for e in rep["tuning"])
    assert rep["machine"]["cpu"] and (tmp_path / "sweep_dynamic_tail.png").stat().st_size > 1000
    assert (tmp_path / "sweep_dynamic_tail.svg").is_file()
    assert "chose" in r.stdout


def test_the_choices_validation_score_is_what_evaluate_gives_under_that_setting(tiny_run, tmp_path):
    """One-field grid (a line plot); the choice re-scored by `evaluate --set` on validation gives the same bpb."""
    r = run_cli("sweep", "--run-dir", tiny_run, "--variant", "dynamic_tail", "--grid", "eval.tail_lr=0.003,0.3",
                "--out", tmp_path / "s", "--device", "cpu")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "s" / "sweep_dynamic_tail.json").read_text())
    lr = rep["choice"]["setting"]["eval.tail_lr"]
    r = run_cli("evaluate", "--run-dir", tiny_run, "--variants", "dynamic_tail", "--set", f"eval.tail_lr={lr}",
                "--out", tmp_path / "e", "--device", "cpu")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "e" / "results.json").read_text())["dynamic_tail"]
    assert res["bpb"] == rep["validation"]["choice"]["bpb"]
    assert (tmp_path / "s" / "sweep_dynamic_tail.png").is_file()


@pytest.mark.parametrize("args, needles", [
    (["--variant", "no_such", "--grid", "eval.tail_lr=0.1"], ["--variant 'no_such'", "unknown variant"]),
    (["--variant", "dynamic_tail", "--grid", "eval.no_field=1"], ["--grid eval.no_field", "unknown field"]),
    (["--variant", "dynamic_tail", "--grid", "model.num_layers=2"], ["--grid model.num_layers", "eval.* fields only"]),
    (["--variant", "dynamic_tail", "--grid", "eval.tail_lr=0.1,fast"], ["--grid eval.tail_lr", "'fast'", "float"]),
    (["--variant", "dynamic_tail", "--grid", "eval.krause_decay=2"], ["--grid eval.krause_decay", "[0, 1]"]),
    (["--variant", "dynamic_tail"], ["at least one --grid"]),
])
def test_bad_sweep_input_is_one_line_naming_the_field(tiny_run, args, needles):
    one_line_error(run_cli("sweep", "--run-dir", tiny_run, *args, "--device", "cpu"), *needles)


def test_a_run_folder_without_an_artifact_or_meta_is_one_line_naming_the_file(tiny_run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_run / "meta.json", bare / "meta.json")
    one_line_error(run_cli("sweep", "--run-dir", bare, "--variant", "dynamic_tail", "--grid", "eval.tail_lr=0.1",
                           "--device", "cpu"), "final_model.int6.ptz", "no artifact")
    one_line_error(run_cli("sweep", "--run-dir", tmp_path / "none", "--variant", "dynamic_tail", "--grid",
                           "eval.tail_lr=0.1", "--device", "cpu"), "meta.json")


def test_settings_are_the_cartesian_product_first_field_slowest():
    from dyneval import sweep

    grid = sweep.parse_grid(["tail_lr=1,2", "eval.tail_subset=all,mlp,all"], preset("smoke"))
    assert grid == {"eval.tail_lr": [1.0, 2.0], "eval.tail_subset": ["all", "mlp"]}
    assert sweep.settings_of(grid)[1] == {"eval.tail_lr": 1.0, "eval.tail_subset": "mlp"} and len(sweep.settings_of(grid)) == 4


# ----------------------------------------------------------------------------------------------
# The sweep's figure: data from the report (sweep.figure_data), drawn by figures.plot_sweep

def sweep_report(grid: dict, bpbs: list, choice: int) -> dict:
    """A finished sweep's report as `sweep` writes it: one tuning entry per setting (None: diverged)."""
    from dyneval import sweep

    tuning = [{"setting": s, "bpb": b} if b is not None else {"setting": s, "bpb": None, "error": "diverged"}
              for s, b in zip(sweep.settings_of(grid), bpbs)]
    score = {"bpb": 2.0}
    return {"variant": "dynamic_krause", "grid": grid, "tuning": tuning, "sliding_tune": {"bpb": 2.1},
            "choice": {"setting": tuning[choice]["setting"], "tune_bpb": bpbs[choice]},
            "tune_stream": {"targets": 2048}, "default": tuning[0]["setting"],
            "validation": {"choice": score, "default": score, "delta_vs_sliding": {"choice": -0.1, "default": -0.1}}}


def test_the_sweep_heatmap_is_drawn_on_the_axes_given_with_a_diverged_cell_written_out():
    from matplotlib.figure import Figure

    from dyneval import figures, sweep

    rep = sweep_report({"eval.krause_lr": [1e-4, 1e-3], "eval.krause_decay": [0.0, 0.01]}, [2.05, None, 2.0, 2.2], 2)
    ax = Figure().subplots()
    figures.plot_sweep(ax, **sweep.figure_data(rep))
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["-0.0500", "diverged", "-0.1000", "+0.1000"]
    assert ax.get_xlabel() == "eval.krause_decay" and ax.get_ylabel() == "eval.krause_lr"
    assert ax.lines[-1].get_xydata().tolist() == [[0.0, 1.0]]  # the choice framed: column 0, row 1
    assert "tuned on 2,048 held-out tokens" in ax.get_title()


def test_the_sweep_line_leaves_a_diverged_setting_out_and_marks_the_choice():
    from matplotlib.figure import Figure

    from dyneval import figures, sweep

    rep = sweep_report({"eval.tail_lr": [0.01, 0.1, 1.0]}, [2.0, 2.05, None], 0)
    ax = Figure().subplots()
    figures.plot_sweep(ax, **sweep.figure_data(rep))
    line, star = ax.lines[:2]
    assert line.get_xdata().tolist() == [0.01, 0.1] and star.get_xydata().tolist() == [[0.01, 2.0 - 2.1]]
    assert ax.get_xscale() == "linear"  # 0.01 to 0.1 spans 10x, not more than 20x


def test_writing_the_sweep_figure_leaves_the_matplotlib_backend_and_style_as_they_were(tmp_path):
    """The old figure switched pyplot to Agg and set the global font size: a notebook's inline plots after a
    sweep stopped showing. It now draws outside pyplot, under a style scoped to the figure."""
    import subprocess
    import sys

    code = ("import json, sys, matplotlib; matplotlib.use('svg'); from dyneval import sweep; "
            "rep = json.loads(sys.argv[1]); sweep.figure(rep, __import__('pathlib').Path(sys.argv[2])); "
            "print(matplotlib.get_backend(), matplotlib.rcParams['font.size'])")
    rep = sweep_report({"eval.tail_lr": [0.01, 0.1]}, [2.0, 2.05], 0)
    r = subprocess.run([sys.executable, "-c", code, json.dumps(rep), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["svg", "10.0"]
    assert (tmp_path / "sweep_dynamic_krause.png").stat().st_size > 1000 and (tmp_path / "sweep_dynamic_krause.svg").is_file()
