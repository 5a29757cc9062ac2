"""Nothing aggregated that is not comparable, nothing finished overwritten (issue 20).

Each test was seen failing on the code before the issue (commit deb3b44); the case number is the issue's.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, one_line_error, run_cli

VARIANTS = ("nonoverlap", "sliding", "dynamic_krause")


def fake_seed(root: Path, seed: int, *, profile="smoke", sets=(), trained_seed=None, sha=None, variants=VARIANTS,
              scored_sha=None, steps=150, eval_sets=()):
    """A seed folder as reproduce leaves it: meta.json (config, size, history, artifact hash) and results."""
    from dyneval.notebook import make_config

    cfg = make_config(profile, seed if trained_seed is None else trained_seed, ", ".join(sets), "data")
    sha = sha or f"{seed:064x}"
    d = root / f"seed{seed}"
    (d / "eval").mkdir(parents=True)
    meta = {"config": cfg.to_dict(), "steps": steps, "tokenizer_sha256": "ab" * 32,
            "size": {"model_bytes": 1000, "code_bytes": 100, "total_bytes": 1100},
            "export": {"artifact_sha256": sha, "settings": {"bits": 6}},
            "history": {"train": [{"step": 1, "train_loss": 6.9}, {"step": steps, "train_loss": 2.4}],
                        "val": [{"step": 0, "val_bpb": 4.1}, {"step": steps, "val_bpb": 1.42}]}}
    eval_cfg = cfg.with_overrides(list(eval_sets)).to_dict()["eval"]
    res = {v: {"loss": 2.0 - i * 0.01 - seed * 1e-4, "bpb": 1.2 - i * 0.01 - seed * 1e-4, "seconds": 1.0,
               "legal": True, "artifact_sha256": scored_sha or sha, "eval_config": eval_cfg}
           for i, v in enumerate(variants)}
    (d / "meta.json").write_text(json.dumps(meta))
    (d / "eval" / "results.json").write_text(json.dumps(res))
    return d


def report(root):
    return run_cli("report", "--runs", root, "--figures", root / "fig")


# ----------------------------------------------------------------------------------------------
# 1. identical runs reported as independent seeds

@pytest.fixture
def notebooks_recorded(monkeypatch):
    from dyneval import reproduce

    ran = []
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, out_dir, params, timeout, log: ran.append(name))
    return ran


@pytest.mark.parametrize("sets, seed_sets", [(["train.seed=5"], {}), (["seed=5"], {}), ([], {2: ["train.seed=5"]})])
def test_reproduce_refuses_a_set_train_seed_before_running_anything(tmp_path, notebooks_recorded, sets, seed_sets):
    from dyneval import reproduce

    with pytest.raises(ValueError, match="--seeds"):
        reproduce.reproduce(reproduce.Reproduction(profile="smoke", seeds=[1, 2], out=tmp_path / "out", overrides=sets,
                                                   seed_overrides=seed_sets), log=lambda *_: None)
    assert notebooks_recorded == []


def test_reproduce_refuses_negative_and_repeated_seeds(tmp_path, notebooks_recorded):
    from dyneval import reproduce

    for seeds in ([-1], [3, 3]):
        with pytest.raises(ValueError, match="--seeds"):
            reproduce.reproduce(reproduce.Reproduction(profile="smoke", seeds=seeds, out=tmp_path / "out"),
                                log=lambda *_: None)
    assert notebooks_recorded == []


def test_the_report_refuses_two_seed_folders_holding_the_same_run(tmp_path):
    fake_seed(tmp_path, 1, trained_seed=5, sha="9b6c5a40" * 8)
    fake_seed(tmp_path, 2, trained_seed=5, sha="9b6c5a40" * 8)
    line = one_line_error(report(tmp_path), "seed 1", "train.seed=5", "seed 2", "artifact")
    assert "9b6c5a40" in line
    assert not (tmp_path / "fig" / "ablation.md").exists()


def test_the_report_refuses_two_seeds_with_the_same_artifact(tmp_path):
    fake_seed(tmp_path, 1, sha="77" * 32)
    fake_seed(tmp_path, 2, sha="77" * 32)
    one_line_error(report(tmp_path), "seed 2", "seed 1's", "777777")


# ----------------------------------------------------------------------------------------------
# 2. the report averages incompatible runs, then fails after writing its tables

def test_the_report_refuses_seeds_of_different_configs_naming_seed_and_field(tmp_path):
    fake_seed(tmp_path, 1)
    fake_seed(tmp_path, 2, sets=["model.num_layers=3"])
    fake_seed(tmp_path, 3, sets=["train.iterations=20"])
    line = one_line_error(report(tmp_path), "seed 2", "model.num_layers", "seed 3", "train.iterations")
    assert "not aggregated" in line
    assert not (tmp_path / "fig").exists() or not any((tmp_path / "fig").iterdir())


def test_the_report_refuses_a_seed_that_lacks_a_variant_before_writing_anything(tmp_path):
    fake_seed(tmp_path, 1)
    fake_seed(tmp_path, 2, variants=VARIANTS[:2])
    one_line_error(report(tmp_path), "seed 2", "dynamic_krause", "results.json")
    assert not (tmp_path / "fig" / "ablation.md").exists()


def test_the_report_refuses_seeds_evaluated_with_other_eval_settings(tmp_path):
    fake_seed(tmp_path, 1)
    fake_seed(tmp_path, 2, eval_sets=["eval.eval_stride=32"])
    one_line_error(report(tmp_path), "seed 2", "eval_stride")


def test_the_report_refuses_results_of_another_artifact_than_meta_records(tmp_path):
    fake_seed(tmp_path, 1)
    fake_seed(tmp_path, 2, scored_sha="ee" * 32)
    one_line_error(report(tmp_path), "seed 2", "another artifact")


def test_comparable_seeds_are_aggregated_with_seed_set_fields_in_the_header(tmp_path):
    from dyneval.report import build_report

    fake_seed(tmp_path, 1)
    fake_seed(tmp_path, 2, sets=["optim.matrix_lr=0.02"])
    (tmp_path / "reproduce.json").write_text(json.dumps({"seed_overrides": {"2": ["optim.matrix_lr=0.02"]}}))
    r = build_report(tmp_path, tmp_path / "fig")
    assert r["rows"][0]["seeds"] == 2
    text = (tmp_path / "fig" / "ablation.md").read_text()
    assert "seed 2: optim.matrix_lr=0.02" in text.split("| variant")[0]


def test_record_1gpu_seeds_differ_only_in_their_published_step_counts_and_are_aggregated(tmp_path):
    from dyneval.report import comparability, load_runs

    for seed in (42, 7):
        fake_seed(tmp_path, seed, profile="record_1gpu", steps=5604)
    runs = load_runs(tmp_path)
    assert [runs[s]["meta"]["config"]["train"]["iterations"] for s in (7, 42)] == [5590, 5604]
    assert comparability(runs) == []


# ----------------------------------------------------------------------------------------------
# 6. the published comparison only for the record's runs; whole numbers printed whole

def _record_meta(sets=(), steps=5604, sha="ab" * 32, data="fineweb10B_sp1024"):
    from dyneval.notebook import make_config

    cfg = make_config("record_1gpu", 42, ", ".join(sets), "data").to_dict()
    cfg["train"]["data_path"] = f"data/datasets/{data}"
    return {"config": cfg, "steps": steps, "tokenizer_sha256": sha,
            "size": {"model_bytes": 15_500_000, "code_bytes": 190_000, "total_bytes": 15_690_000},
            "history": {"train": [], "val": [{"step": steps, "val_bpb": 1.2}]}}


@pytest.mark.parametrize("meta_args, needle", [
    ({"data": "embedded_sp1024"}, "data"), ({"steps": 6, "sets": ["train.iterations=6"]}, "6 steps"),
    ({"sets": ["optim.matrix_lr=0.05"]}, "optim.matrix_lr"), ({"sets": ["train.ema_decay=0"]}, "EMA"),
    ({"sha": None}, "data")])
def test_a_run_with_the_records_model_but_not_its_data_schedule_ema_or_steps_is_not_compared(meta_args, needle):
    from dyneval.published_run import published_comparison, published_markdown

    meta = _record_meta(**meta_args)
    assert published_comparison(meta) == []
    text = published_markdown(meta).strip()
    assert len(text.splitlines()) == 1 and needle in text and "Not compared" in text


def test_the_records_run_is_compared_and_published_means_of_counts_print_whole():
    from dyneval.report import published_markdown

    meta = _record_meta()
    meta["config"]["train"]["seed"] = 1337  # an unpublished seed: the published mean
    text = published_markdown(meta)
    assert "5,605" in text and "5604.6667" not in text and "15,523,053" in text and "15523053.3333" not in text


# ----------------------------------------------------------------------------------------------
# 4. a finished run, or a checkpoint, silently overwritten

@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory, tiny_cfg):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(tiny_cfg.with_overrides(["train.iterations=2", "train.warmup_steps=0"]).to_dict()))
    return path


def _sha(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_train_refuses_an_out_holding_a_finished_run_unless_fresh(tmp_path, tiny_json):
    out = tmp_path / "run"
    r = run_cli("train", "--config", tiny_json, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    meta = (out / "meta.json").read_text()
    for extra in ([], ["--resume"]):
        one_line_error(run_cli("train", "--config", tiny_json, "--out", out, "--device", "cpu", *extra),
                       str(out), "finished run", "--fresh")
        assert (out / "meta.json").read_text() == meta
    r = run_cli("train", "--config", tiny_json, "--out", out, "--device", "cpu", "--fresh")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / "eval").exists()  # no results of the old artifact beside the new one


def test_train_without_resume_refuses_an_out_holding_a_checkpoint(tmp_path, tiny_json):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"the state of an interrupted run")
    one_line_error(run_cli("train", "--config", tiny_json, "--out", out, "--device", "cpu"),
                   "checkpoint", "--resume", "--fresh")
    assert (out / "checkpoint.pt").read_bytes() == b"the state of an interrupted run"


@pytest.mark.parametrize("what", ["meta.json", "checkpoint.pt"])
def test_notebook_02_refuses_a_run_dir_holding_a_run_of_another_config(tmp_path, monkeypatch, tiny_cfg, what):
    import torch

    from dyneval import notebook

    launched = []
    monkeypatch.setattr(notebook, "launch", lambda args, nproc=1, log=print: launched.append(args))
    other = tiny_cfg.with_overrides(["model.num_layers=2"]).to_dict()
    if what == "meta.json":
        (tmp_path / "meta.json").write_text(json.dumps({"config": other}))
    else:
        torch.save({"config": other, "step": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"run_dir .*another config.*num_layers"):
        notebook.train_stage(tiny_cfg, tmp_path, log=lambda *_: None)
    assert launched == []
    same = tiny_cfg.to_dict()
    (tmp_path / "meta.json").write_text(json.dumps({"config": same}))
    assert notebook.train_stage(tiny_cfg, tmp_path, log=lambda *_: None)["config"] == same and launched == []


# ----------------------------------------------------------------------------------------------
# 3 and 8. evaluate: one writer per folder, a rerun continues, signals end it cleanly

@pytest.fixture(scope="module")
def seed_run(tmp_path_factory, tiny_cfg):
    """A tiny two-step run trained with seed 1 in `<runs>/seed1`, as reproduce lays it out."""
    from dyneval.train import train

    out = tmp_path_factory.mktemp("runs") / "seed1"
    train(tiny_cfg.with_overrides(["train.iterations=2", "train.warmup_steps=0", "train.seed=1"]), out, device="cpu")
    return out


def _evaluate(run, out, variants, *extra):
    return run_cli("evaluate", "--run-dir", run, "--variants", variants, "--out", out, "--device", "cpu", *extra)


def test_a_second_evaluate_into_a_folder_another_one_writes_is_refused(tmp_path, seed_run):
    import fcntl

    out = tmp_path / "eval"
    out.mkdir()
    with open(out / ".dyneval.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running evaluate holds it
        one_line_error(_evaluate(seed_run, out, "nonoverlap"), str(out), "another dyneval process")
    assert not (out / "results.json").exists()


def test_rerunning_evaluate_keeps_finished_variants_and_adds_the_missing_ones(tmp_path, seed_run):
    out = tmp_path / "eval"
    assert _evaluate(seed_run, out, "nonoverlap").returncode == 0
    first = json.loads((out / "results.json").read_text())["nonoverlap"]
    r = _evaluate(seed_run, out, "nonoverlap,sliding")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nonoverlap already scored" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["nonoverlap"] == first and "bpb" in res["sliding"]  # not run again: the same seconds too
    r = _evaluate(seed_run, out, "nonoverlap", "--fresh")
    assert r.returncode == 0 and "already scored" not in r.stdout
    assert list(json.loads((out / "results.json").read_text())) == ["nonoverlap"]
    assert not (out / "sliding.npz").exists()


def test_fresh_interrupted_before_its_first_variant_leaves_no_old_result_behind(tmp_path, seed_run, tiny_cfg,
                                                                                   monkeypatch):
    import dataclasses

    from dyneval import evaluate_stage, variants
    from dyneval.config import RunConfig

    out = tmp_path / "eval"
    assert _evaluate(seed_run, out, "nonoverlap").returncode == 0
    cfg = RunConfig.from_dict(json.loads((seed_run / "meta.json").read_text())["config"])

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setitem(variants.VARIANTS, "sliding", dataclasses.replace(variants.VARIANTS["sliding"], run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        evaluate_stage.evaluate_artifact(cfg, seed_run / "final_model.int6.ptz", out, ["sliding"],
                                         evaluate_stage.EvalOptions(device="cpu", fresh=True), log=lambda *_: None)
    assert not (out / "results.json").exists() and not (out / "nonoverlap.npz").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_evaluate_after_the_variant_in_flight_with_one_line(tmp_path, seed_run, sig):
    import os

    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dyneval", "evaluate", "--run-dir", str(seed_run), "--variants", "all",
           "--out", str(out), "--device", "cpu"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    for line in p.stdout:
        if line.startswith("nonoverlap "):
            p.send_signal(sig)
            break
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 130, (p.returncode, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted:") and "results.json" in lines[0], stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert "nonoverlap" in res and len(res) < 11
    assert all((out / f"{v}.npz").is_file() for v in res)  # every result has its stream: files consistent


def test_more_virtual_ranks_than_sliding_windows_is_refused(tmp_path, seed_run):
    one_line_error(_evaluate(seed_run, tmp_path / "eval", "dynamic_tail", "--virtual-ranks", "100"),
                   "--virtual-ranks 100", "64 sliding windows")


def test_variants_are_deduplicated_and_all_may_appear_in_a_list():
    from dyneval.variants import DEFAULT_ORDER, parse_variants

    assert parse_variants("sliding,sliding") == ["sliding"]
    assert parse_variants("all,sliding") == DEFAULT_ORDER
    assert parse_variants("sliding,all")[0] == "sliding" and len(parse_variants("sliding,all")) == len(DEFAULT_ORDER)


# ----------------------------------------------------------------------------------------------
# 5. export --bits 4 leaves stale numbers

def test_an_export_at_4_bits_records_what_it_wrote_and_evaluate_and_report_use_it(tmp_path, seed_run):
    import shutil

    from dyneval.report import build_report

    run = tmp_path / "runs" / "seed1"
    shutil.copytree(seed_run, run)
    six = _sha(run / "final_model.int6.ptz")
    r = run_cli("export", run, "--bits", "4", "--passthrough-max-numel", "1024", "--device", "cpu")  # tiny: quantize
    assert r.returncode == 0, r.stderr[-2000:]
    assert "int4_roundtrip" in r.stdout and "int6" not in r.stdout
    four = run / "final_model.int4.ptz"
    assert four.is_file() and _sha(run / "final_model.int6.ptz") == six  # the 6-bit artifact is kept as it was
    meta, export = json.loads((run / "meta.json").read_text()), json.loads((run / "export.json").read_text())
    for rec in (meta["export"], export):
        assert rec["bits"] == 4 and rec["artifact_sha256"] == _sha(four) and rec["artifact"] == four.name
    assert meta["size"]["model_bytes"] == four.stat().st_size
    r = _evaluate(run, run / "eval", "nonoverlap,sliding")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "eval" / "results.json").read_text())
    assert {v["bits"] for v in res.values()} == {4} and {v["artifact_sha256"] for v in res.values()} == {_sha(four)}
    row = build_report(tmp_path / "runs", tmp_path / "fig")["rows"][0]
    assert row["artifact_bytes_mean"] == four.stat().st_size + meta["size"]["code_bytes"]


# ----------------------------------------------------------------------------------------------
# 7. wrong-hardware record runs and schedules that cannot fit start silently

def _first_lines(args, corpus_root, stop="step:1/"):
    """Start `train` and return its output up to the first training step, then stop it."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "dyneval", "train", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if stop in line or len(lines) > 200:
            break
    p.kill()
    p.wait()
    return "".join(lines)


def test_a_record_profile_on_the_cpu_warns_at_its_start_what_its_wall_clock_will_do():
    import torch

    from dyneval.config import preset
    from dyneval.train import start_warnings

    lines = start_warnings(preset("record"), torch.device("cpu"), 1)
    assert len(lines) == 1 and "8×H100" in lines[0] and "CPU" in lines[0] and "600 s wall clock" in lines[0]
    assert start_warnings(preset("smoke"), torch.device("cpu"), 1) == []


def test_training_warns_in_its_log_when_the_warmdown_cannot_fit_the_step_count(tmp_path, tiny_cfg, corpus_root):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_cfg.with_overrides(["train.iterations=3", "train.warmdown_iters=300",
                                                       "train.warmup_steps=0"]).to_dict()))
    text = _first_lines(["--config", cfg, "--out", tmp_path / "run", "--device", "cpu"], corpus_root)
    warn = [l for l in text.splitlines() if l.startswith("warning: warmdown_iters 300 > iterations 3")]
    assert warn and "1.0% of its peak" in warn[0], text[-2000:]


# ----------------------------------------------------------------------------------------------
# 8. corrupt inputs, negative seeds, and stages silent for minutes

def _without(key):
    def damage(d):
        meta = json.loads((d / "meta.json").read_text())
        del meta[key]
        (d / "meta.json").write_text(json.dumps(meta))
    return damage


@pytest.mark.parametrize("damage, needles", [
    (lambda d: (d / "eval" / "sliding.npz").write_bytes(b"PK\x03\x04 truncated"), ["sliding.npz", "--fresh"]),
    (lambda d: (d / "eval" / "results.json").write_text('{"sliding": {"bpb": "1.2", "loss": 2.0}}'),
     ["results.json", "sliding.bpb", "'1.2'"]),
    (lambda d: (d / "eval" / "results.json").write_text('{"sliding": {"bpb": 1.2, "lo'), ["results.json", "truncated"]),
    *[(_without(k), ["meta.json", repr(k)]) for k in ("size", "history", "config")],
])
def test_a_damaged_input_of_the_report_is_one_line_naming_the_file(tmp_path, damage, needles):
    fake_seed(tmp_path, 1)
    damage(fake_seed(tmp_path, 2))
    one_line_error(report(tmp_path), "seed2", *needles)


def test_a_truncated_results_json_in_the_evaluate_folder_is_one_line_naming_it(tmp_path, seed_run):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"nonoverlap": {"bpb"')
    one_line_error(_evaluate(seed_run, out, "nonoverlap"), str(out / "results.json"))


def test_a_negative_seed_is_refused_naming_the_field():
    r = run_cli("config", "--profile", "smoke", "--set", "train.seed=-1")
    one_line_error(r, "seed=-1")


def test_reproduce_passes_each_cells_output_on_as_it_comes(tmp_path, monkeypatch):
    import papermill

    from dyneval import reproduce

    def execute(src, dst, **kw):  # a notebook whose training cell prints two log lines
        out = kw.get("stdout_file")
        assert out is not None, "the cells' output is not passed on"
        out.write("step:10/150 train_loss:5.1\nstep:20/")
        out.write("150 train_loss:4.8\n")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    log = []
    reproduce.run_notebook("02_train", tmp_path, {}, 60, log.append)
    assert [l.strip() for l in log[1:3]] == ["step:10/150 train_loss:5.1", "step:20/150 train_loss:4.8"]


def test_bench_eval_says_what_it_is_doing_before_each_long_pass(tmp_path, tiny_cfg):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_cfg.to_dict()))
    r = run_cli("bench", "eval", "--config", cfg, "--variants", "sliding", "--windows", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    first_json = next(i for i, l in enumerate(lines) if l.startswith("{"))
    assert any(l.startswith("bench eval: sliding: warm-up") for l in lines[:first_json]), r.stdout


def test_a_long_variant_says_it_is_still_running_at_least_every_30_seconds(monkeypatch):
    from dyneval import evaluate_stage

    said = []
    assert evaluate_stage.HEARTBEAT_SECONDS <= 30
    with evaluate_stage.heartbeat(said.append, "dynamic_krause", every=0.05):
        time.sleep(0.3)
    n = len(said)
    time.sleep(0.15)
    assert n >= 3 and len(said) == n and said[0].startswith("dynamic_krause: still running")
