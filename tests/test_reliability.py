"""Nothing silently wrong, nothing run that should not be (issue 13): each test was seen failing on the old code.

Torchrun command lines, tokenizer/dataset identity, stale reproduction seeds, non-finite numbers,
hangs and limits, and one-line errors for bad input.
"""

import errno
import fcntl
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, one_line_error, run_cli

LOCK_NAME = ".dyneval.lock"  # the run-folder lock that train and reproduce take


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory, tiny_cfg):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(tiny_cfg.to_dict()))
    return path


@pytest.fixture(scope="module")
def bare_data(tmp_path_factory, corpus_root):
    """The embedded shards without their manifest (as the challenge's own download has none)."""
    d = tmp_path_factory.mktemp("bare") / "embedded_sp1024"
    d.mkdir()
    for f in (corpus_root / "datasets" / "embedded_sp1024").glob("fineweb_*.bin"):
        shutil.copy(f, d)
    return d


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_cfg, bare_data):
    """A tiny run trained on the manifest-less copy of the data."""
    from dyneval.train import train

    out = tmp_path_factory.mktemp("run")
    train(tiny_cfg.with_overrides({"train.data_path": str(bare_data)}), out, device="cpu")
    return out


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """Another 1024-piece tokenizer (trained on the pydoc topics only): same vocabulary size, other pieces."""
    from pydoc_data import topics

    from dyneval import corpus

    path = tmp_path_factory.mktemp("tok") / "other_1024_bpe.model"
    corpus._train_tokenizer([topics.topics[k] for k in sorted(topics.topics)], path)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory, tiny_cfg):
    """(config, its JSON, an artifact of it): wide enough that the exporter quantizes (tensors > 65,536 values)."""
    from dyneval import quant
    from dyneval.model import GPT

    cfg = tiny_cfg.with_overrides(["model.model_dim=256"])
    d = tmp_path_factory.mktemp("wide")
    (d / "wide.json").write_text(json.dumps(cfg.to_dict()))
    torch.manual_seed(0)
    quant.write_artifact(d / "final_model.int6.ptz", GPT(cfg.model).state_dict())
    return cfg, d / "wide.json", d / "final_model.int6.ptz"


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def quick_cfg(tiny_cfg):
    """The tiny config, trained for two steps (for tests about launching, not training)."""
    return tiny_cfg.with_overrides(["train.iterations=2", "train.warmup_steps=0"])


def _artifact_with(src, dest, edit):
    """Rewrite an artifact after `edit(tensors, meta)`, compressed as the exporter does."""
    import zstandard

    from dyneval import quant

    tensors, meta = quant.read_artifact(src)
    edit(tensors, meta)
    buf = io.BytesIO()
    torch.save({"w": tensors, "m": meta}, buf)
    dest.write_bytes(zstandard.ZstdCompressor(level=3).compress(buf.getvalue()))
    return dest


# ----------------------------------------------------------------------------------------------
# 0. torchrun must not take an option of a dyneval command for one of its own

def _dyneval_options():
    import argparse

    from dyneval.__main__ import build_parser

    found, todo = {}, [("", build_parser())]
    while todo:
        name, p = todo.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{name} {n}".strip(), sp) for n, sp in a.choices.items()]
            else:
                for o in a.option_strings:
                    found.setdefault(o, []).append(name)
    return found


def test_no_option_of_any_dyneval_command_is_torchruns_or_an_abbreviation_of_one():
    from torch.distributed.run import get_args_parser

    theirs = [o for o in get_args_parser()._option_string_actions if o.startswith("--")]
    clashes = {o: [t for t in theirs if t.startswith(o)] for o in _dyneval_options()
               if o.startswith("--") and o != "--help"}
    assert not {o: t for o, t in clashes.items() if t}, clashes


def test_torchrun_hands_every_dyneval_option_through_to_the_command():
    from torch.distributed.run import get_args_parser

    for opt, commands in _dyneval_options().items():
        if opt in ("-h", "--help"):
            continue
        for command in commands:
            tail = [*command.split(), opt, "x"]
            args = get_args_parser().parse_args(["--standalone", "--nproc_per_node=2", "-m", "dyneval", *tail])
            assert args.training_script_args == tail, (opt, command)


def _documented_torchrun_lines():
    """The torchrun command lines of the README and of the GPU guide it links (docs/GPU.md), in order, once each."""
    text = "\n".join((REPO / page).read_text() for page in ("README.md", "docs/GPU.md"))
    lines = [m.group(0).strip("`") for m in re.finditer(r"`?torchrun [^`\n]+", text) if " -m dyneval " in m.group(0)]
    lines = list(dict.fromkeys(lines))
    assert len(lines) >= 3, lines  # train, evaluate, and the two-node train
    return lines


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_every_torchrun_command_line_of_the_readme_and_the_gpu_guide_runs_under_gloo_with_two_processes(tmp_path,
                                                                                                         quick_cfg):
    """Each line as written, launched in a scratch folder: 8 GPUs become 2 processes, 2 nodes x 4 become 2 x 1,
    HOST becomes loopback, and `--config` (which a profile gives way to) makes the model tiny."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    quick_json = tmp_path / "quick.json"
    quick_json.write_text(json.dumps(quick_cfg.to_dict()))
    for line in _documented_torchrun_lines():
        words = line.split()
        nodes = next((int(w.split("=")[1]) for w in words if w.startswith("--nnodes=")), 1)
        port = _free_port()
        words = [f"--nproc_per_node={2 // nodes}" if w.startswith("--nproc_per_node=") else
                 w.replace("HOST:29500", f"127.0.0.1:{port}") for w in words]
        if "--profile" in words:  # the profile gives way to the tiny config (the two are exclusive)
            i = words.index("--profile")
            words[i: i + 2] = ["--config", str(quick_json)]
        cmd = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                  cwd=tmp_path) for _ in range(nodes)]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), line + "\n" + "\n".join(o[-3000:] for o in outs)
    assert json.loads((tmp_path / "runs/record_seed42/meta.json").read_text())["config"]["train"]["seed"] == 42
    results = json.loads((tmp_path / "runs/record_seed42/eval/results.json").read_text())
    assert all(math.isfinite(r["bpb"]) and r["world_size"] == 2 for r in results.values())
    assert (tmp_path / "runs/r/final_model.int6.ptz").is_file()


def test_the_notebooks_launch_training_and_evaluation_under_torchrun_with_two_processes(tmp_path, quick_cfg,
                                                                                       monkeypatch):
    from dyneval import notebook

    monkeypatch.setattr(notebook, "num_processes", lambda cfg: 2)
    log = []
    meta = notebook.train_stage(quick_cfg, tmp_path / "run", log=log.append)
    assert meta["env"]["world_size"] == 2
    results = notebook.evaluate_stage(quick_cfg, tmp_path / "run", "nonoverlap,sliding", log=log.append)
    assert any("torch.distributed.run" in line for line in log)
    assert set(results) == {"nonoverlap", "sliding"} and all(r["world_size"] == 2 for r in results.values())


# ----------------------------------------------------------------------------------------------
# 3. a tokenizer other than the dataset's is refused wherever the two meet

def test_evaluating_with_another_tokenizer_of_the_same_vocabulary_size_is_refused_naming_both_files(
        tmp_path, trained_run, tiny_json, corpus_root, other_tokenizer):
    data = corpus_root / "datasets" / "embedded_sp1024"
    r = run_cli("evaluate", "--artifact", trained_run / "final_model.int6.ptz", "--config", tiny_json,
                "--data", data, "--tokenizer", other_tokenizer, "--variants", "nonoverlap", "--out", tmp_path / "e")
    one_line_error(r, other_tokenizer, data / "manifest.json")


def test_training_with_another_tokenizer_than_the_datasets_manifest_records_is_refused(
        tmp_path, tiny_json, other_tokenizer):
    r = run_cli("train", "--config", tiny_json, "--set", f"train.tokenizer_path={other_tokenizer}",
                "--out", tmp_path / "t", "--device", "cpu")
    one_line_error(r, other_tokenizer, "manifest.json")
    assert not (tmp_path / "t" / "final_model.int6.ptz").exists()


def test_without_a_manifest_the_run_records_its_tokenizer_and_evaluation_refuses_another(
        tmp_path, trained_run, tiny_cfg, other_tokenizer):
    meta = json.loads((trained_run / "meta.json").read_text())
    assert meta.get("tokenizer_sha256") == _sha256(Path(tiny_cfg.train.tokenizer_path))
    ok = run_cli("evaluate", "--run-dir", trained_run, "--variants", "nonoverlap", "--out", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    r = run_cli("evaluate", "--run-dir", trained_run, "--tokenizer", other_tokenizer, "--variants", "nonoverlap",
                "--out", tmp_path / "e")
    one_line_error(r, other_tokenizer, trained_run / "meta.json")


# ----------------------------------------------------------------------------------------------
# 4. reproduce skips only a seed identical to the one asked for

def _complete_seed(out, data_root, overrides=""):
    """A seed folder that looks complete: meta.json (config, artifact hash), results for every variant."""
    from dyneval.variants import VARIANTS
    from dyneval.notebook import make_config

    seed_dir = out / "seed42"
    (seed_dir / "eval").mkdir(parents=True)
    art = seed_dir / "final_model.int6.ptz"
    art.write_bytes(b"artifact bytes")
    cfg = make_config("smoke", 42, overrides, str(data_root))
    (seed_dir / "meta.json").write_text(json.dumps({"config": cfg.to_dict(), "artifact_sha256": _sha256(art)}))
    results = {v: {"bpb": 2.0, "loss": 3.0, "artifact": str(art)} for v in VARIANTS}
    (seed_dir / "eval" / "results.json").write_text(json.dumps(results))
    return seed_dir


@pytest.fixture
def notebooks_recorded(monkeypatch):
    from dyneval import reproduce

    ran = []
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, out_dir, params, timeout, log: ran.append(name))
    return ran


def asked_for(tmp_path, *overrides, fresh=False):
    """The reproduction these tests ask for: the smoke profile's seed 42 into `<tmp_path>/out`."""
    from dyneval.reproduce import Reproduction

    return Reproduction(profile="smoke", seeds=[42], out=tmp_path / "out", overrides=list(overrides),
                        data_root=str(tmp_path / "data"), fresh=fresh)


def test_reproduce_skips_a_complete_seed_only_when_config_and_artifact_are_identical(tmp_path, notebooks_recorded):
    from dyneval import reproduce

    seed_dir = _complete_seed(tmp_path / "out", tmp_path / "data", "train.iterations=7")
    s = reproduce.reproduce(asked_for(tmp_path, "train.iterations=7"), log=lambda *_: None)
    assert s["skipped"] == [42] and notebooks_recorded == ["05_report"]
    with pytest.raises(ValueError, match=r"seed 42: .*seed42 .*train.iterations.*--fresh"):
        reproduce.reproduce(asked_for(tmp_path, "train.iterations=9"), log=lambda *_: None)
    (seed_dir / "final_model.int6.ptz").write_bytes(b"another artifact")
    with pytest.raises(ValueError, match=r"seed 42: .*artifact"):
        reproduce.reproduce(asked_for(tmp_path, "train.iterations=7"), log=lambda *_: None)


def test_reproduce_with_fresh_runs_a_seed_whose_config_differs_again_from_scratch(tmp_path, notebooks_recorded):
    from dyneval import reproduce

    seed_dir = _complete_seed(tmp_path / "out", tmp_path / "data", "train.iterations=7")
    log = []
    s = reproduce.reproduce(asked_for(tmp_path, "train.iterations=9", fresh=True), log=log.append)
    assert s["done"] == [42] and notebooks_recorded[:4] == ["01_data", "02_train", "03_quantize", "04_evaluate"]
    assert not (seed_dir / "meta.json").exists() and any("fresh" in line for line in log)


# ----------------------------------------------------------------------------------------------
# 6. no non-finite number is reported, exported or loaded

def test_training_that_diverges_on_its_last_step_fails_with_one_line_instead_of_a_nan_score(tmp_path, tiny_json):
    r = run_cli("train", "--config", tiny_json, "--out", tmp_path / "d", "--device", "cpu",
                "--set", "train.iterations=1", "--set", "train.warmup_steps=0", "--set", "optim.tied_embed_lr=1e30",
                "--set", "optim.matrix_lr=1e30", "--set", "optim.scalar_lr=1e30")
    one_line_error(r, "final_model.int6.ptz", "non-finite")
    assert not (tmp_path / "d" / "final_model.int6.ptz").exists() and not (tmp_path / "d" / "meta.json").exists()


def test_exporting_non_finite_weights_is_refused_and_writes_no_artifact(tmp_path):
    from dyneval import quant

    state = {"blocks.0.mlp.fc.weight": torch.randn(300, 300), "smear.gate": torch.zeros(8)}
    state["blocks.0.mlp.fc.weight"][3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"art\.ptz.*non-finite.*blocks\.0\.mlp\.fc\.weight"):
        quant.write_artifact(tmp_path / "art.ptz", state)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("what", ["nan_weight", "inf_scale"])
def test_an_artifact_with_nan_weights_or_an_inf_scale_is_refused_at_load_naming_the_file(tmp_path, wide, what):
    from dyneval import quant
    from dyneval.model import GPT

    def edit(tensors, meta):
        if what == "nan_weight":
            name = next(n for n, m in meta.items() if m == "passthrough" and tensors[n].is_floating_point())
            tensors[name].view(-1)[0] = float("nan")
        else:
            name = next(n for n, m in meta.items() if isinstance(m, dict))
            tensors[name + ".scale"].view(-1)[0] = float("inf")

    cfg, cfg_json, artifact = wide
    bad = _artifact_with(artifact, tmp_path / "bad.ptz", edit)
    with pytest.raises(ValueError, match=r"bad\.ptz.*non-finite"):
        quant.load_artifact(bad, GPT(cfg.model).state_dict())
    r = run_cli("evaluate", "--artifact", bad, "--config", cfg_json, "--variants", "sliding", "--out", tmp_path / "e")
    one_line_error(r, bad)


def test_the_report_refuses_to_aggregate_a_non_finite_score(tmp_path):
    from dyneval import report

    runs = {s: {"meta": {"size": {"total_bytes": 1}}, "dir": tmp_path,
                "results": {"sliding": {"bpb": 2.0, "loss": 3.0, "seconds": 1.0, "legal": True},
                            "dynamic": {"bpb": float("nan") if s == 7 else 1.9, "loss": 2.9, "seconds": 1.0,
                                        "legal": True}}} for s in (42, 7)}
    with pytest.raises(ValueError, match="seed 7.*dynamic.*non-finite"):
        report.aggregate(runs)


# ----------------------------------------------------------------------------------------------
# 7. hangs and limits

def test_a_training_shard_with_zero_tokens_is_refused_naming_the_shard(tmp_path):
    """Refused when the stream is built; without that check `take` would wrap around the empty shard forever,
    so the whole use (build, then take) runs in a thread: a regression fails here instead of hanging."""
    from dyneval import data

    data.write_shard(tmp_path / "fineweb_train_000000.bin", np.zeros(0, dtype=np.uint16))
    outcome = []

    def use():
        try:
            data.TokenStream(data.train_pattern(tmp_path)).take(8)
            outcome.append("took tokens from an empty shard")
        except data.ShardError as e:
            outcome.append(e)

    t = threading.Thread(target=use, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "TokenStream spins on an empty shard instead of refusing it"
    assert len(outcome) == 1 and isinstance(outcome[0], data.ShardError), outcome
    assert re.search(r"fineweb_train_000000\.bin.*no tokens", str(outcome[0]))


@pytest.mark.parametrize("content_size", [True, False], ids=["size_in_header", "size_not_in_header"])
def test_an_artifact_that_decompresses_far_beyond_the_models_size_is_refused(tmp_path, tiny_cfg, content_size):
    import zstandard

    from dyneval import quant
    from dyneval.model import GPT

    bomb = tmp_path / "bomb.ptz"
    c = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    with open(bomb, "wb") as f, c.stream_writer(f, size=(64 << 20) if content_size else -1) as w:
        for _ in range(64):
            w.write(bytes(1 << 20))  # 64 MiB of zeros: some kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"bomb\.ptz.*decompress.*(more than|beyond)"):
        quant.load_artifact(bomb, GPT(tiny_cfg.model).state_dict())


def test_two_writers_of_one_file_do_not_share_a_temporary_name(tmp_path):
    from dyneval import files

    target = tmp_path / "results.json"
    with files.atomic_open(target, "w") as a:
        a.write("first")
        with files.atomic_open(target, "w") as b:
            b.write("second")
    assert target.read_text() == "first" and not list(tmp_path.glob("*.tmp"))


def _hold_lock(folder):
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_NAME, "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_a_second_training_process_on_a_locked_run_folder_is_refused_with_one_line(tmp_path, tiny_json):
    held = _hold_lock(tmp_path / "run")
    try:
        r = run_cli("train", "--config", tiny_json, "--out", tmp_path / "run", "--device", "cpu")
        one_line_error(r, tmp_path / "run", "another")
        assert not (tmp_path / "run" / "final_model.int6.ptz").exists()
    finally:
        held.close()


def test_a_second_reproduce_on_a_locked_folder_is_refused(tmp_path, notebooks_recorded):
    from dyneval import reproduce

    held = _hold_lock(tmp_path / "out")
    try:
        with pytest.raises(ValueError, match="another"):
            reproduce.reproduce(asked_for(tmp_path), log=lambda *_: None)
        assert notebooks_recorded == []
    finally:
        held.close()


# ----------------------------------------------------------------------------------------------
# 8. one-line errors at the boundary, tracebacks only for bugs

def _can_mount():
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 kB file system (root only): a real full disk."""
    if not _can_mount():
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mount not permitted here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not _can_mount() or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)]).returncode:
        pytest.skip("as root, a read-only folder needs a read-only mount")
    yield d
    subprocess.run(["umount", "-l", str(d)])


def test_a_read_only_output_folder_is_a_one_line_error(read_only_dir, tiny_json):
    one_line_error(run_cli("train", "--config", tiny_json, "--out", read_only_dir / "run", "--device", "cpu"),
                   read_only_dir / "run")
    one_line_error(run_cli("train", "--config", tiny_json, "--out", read_only_dir, "--device", "cpu"), read_only_dir)


def test_an_out_that_is_a_file_is_a_one_line_error(tmp_path, tiny_json, trained_run):
    f = tmp_path / "a_file"
    f.write_text("x")
    one_line_error(run_cli("train", "--config", tiny_json, "--out", f, "--device", "cpu"), f, "not a folder")
    one_line_error(run_cli("evaluate", "--run-dir", trained_run, "--variants", "nonoverlap", "--out", f),
                   f, "not a folder")


def test_a_full_disk_says_disk_full(small_tmpfs, tiny_json):
    r = run_cli("train", "--config", tiny_json, "--out", small_tmpfs / "run", "--device", "cpu",
                "--set", "train.iterations=1", "--set", "train.warmup_steps=0")
    one_line_error(r, "disk full")
    assert not [p for p in (small_tmpfs / "run").iterdir() if ".tmp" in p.name]


def test_a_full_disk_under_any_write_says_disk_full(tmp_path, monkeypatch, trained_run, capsys):
    """The same on any machine: every file the library writes atomically runs out of space."""
    from dyneval import files
    from dyneval.__main__ import main

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", lambda path, mode="r", *a, **k: Full(path, mode.replace("b", "")),
                        raising=False)
    rc = main(["evaluate", "--run-dir", str(trained_run), "--variants", "nonoverlap", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dyneval: error: disk full") and err.count("\n") == 1, err


def _shard_with_bad_token(src, dest, split):
    from dyneval import data

    dest.mkdir(exist_ok=True)
    for f in src.glob("fineweb_*.bin"):
        shutil.copy(f, dest)
    shard = dest / f"fineweb_{split}_000000.bin"
    tokens = np.array(data.read_shard(shard))
    tokens[5] = 5000  # a uint16 id beyond the 1024-piece vocabulary
    data.write_shard(shard, tokens)
    return shard


def test_a_token_id_beyond_the_vocabulary_in_a_shard_is_a_one_line_error(tmp_path, bare_data, tiny_json,
                                                                         trained_run):
    bad = _shard_with_bad_token(bare_data, tmp_path / "badval", "val")
    one_line_error(run_cli("evaluate", "--run-dir", trained_run, "--data", bad.parent, "--variants", "nonoverlap",
                           "--out", tmp_path / "e"), bad, "5000", "vocab")
    bad = _shard_with_bad_token(bare_data, tmp_path / "badtrain", "train")
    one_line_error(run_cli("train", "--config", tiny_json, "--set", f"train.data_path={bad.parent}",
                           "--out", tmp_path / "t", "--device", "cpu"), bad, "5000", "vocab")


@pytest.mark.parametrize("edit", ["int6_as_passthrough", "passthrough_as_int6", "scale_rows", "unknown_type"])
def test_artifact_metadata_that_does_not_match_its_tensors_is_a_one_line_error(tmp_path, wide, edit):
    def change(tensors, meta):
        quantized = next(n for n, m in meta.items() if isinstance(m, dict))
        passthrough = next(n for n, m in meta.items() if m == "passthrough")
        if edit == "int6_as_passthrough":
            meta[quantized] = "passthrough"
        elif edit == "passthrough_as_int6":
            meta[passthrough] = {"type": "int6"}
        elif edit == "scale_rows":
            tensors[quantized + ".scale"] = tensors[quantized + ".scale"][:-1]
        else:
            meta[quantized] = {"type": "int12"}  # int2..int8 are grids `export --bits` writes

    bad = _artifact_with(wide[2], tmp_path / "bad.ptz", change)
    one_line_error(run_cli("evaluate", "--artifact", bad, "--config", wide[1], "--variants", "nonoverlap",
                           "--out", tmp_path / "e"), bad)


@pytest.mark.parametrize("args,needle", [
    (["--virtual-ranks", "-2"], "--virtual-ranks"),
    (["--virtual-ranks", "0"], "--virtual-ranks"),
    (["--variants", ""], "--variants"),
    (["--variants", " , "], "--variants"),
])
def test_meaningless_evaluate_arguments_are_one_line_errors(tmp_path, trained_run, args, needle):
    one_line_error(run_cli("evaluate", "--run-dir", trained_run, "--out", tmp_path / "e", *args), needle)
    assert not (tmp_path / "e" / "results.json").exists()


@pytest.mark.parametrize("config,needle", [
    ({"model": None}, "model"),
    ({"eval": []}, "eval"),
    ([], "config"),
])
def test_a_config_file_with_a_section_that_is_not_an_object_is_a_one_line_error(tmp_path, config, needle):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(config))
    one_line_error(run_cli("config", "--config", p), p, needle)


@pytest.mark.parametrize("setting,field", [
    ("eval.ttt_momentum=nan", "ttt_momentum"), ("eval.ttt_momentum=-0.1", "ttt_momentum"),
    ("eval.ttt_momentum=1", "ttt_momentum"), ("model.tied_embed_init_std=-0.01", "tied_embed_init_std"),
    ("model.bigram_dim=0", "bigram_dim"), ("model.bigram_dim=-4", "bigram_dim"),
    ("eval.krause_decay=1.5", "krause_decay"), ("model.qk_gain_init=inf", "qk_gain_init"),
])
def test_meaningless_config_values_are_refused_naming_the_field(setting, field):
    one_line_error(run_cli("config", "--profile", "smoke", "--set", setting), field)


def test_bigram_dim_is_free_when_there_is_no_bigram_table():
    from dyneval.config import preset

    assert preset("smoke").with_overrides(["model.bigram_vocab_size=0", "model.bigram_dim=0"]).model.bigram_dim == 0


@pytest.mark.parametrize("keep", [(), ("val_tokens_used",)], ids=["empty", "one_entry"])
def test_a_fixture_whose_expected_json_checks_next_to_nothing_is_refused(tmp_path, fixture_dir, keep):
    real = json.loads((fixture_dir / "expected.json").read_text())
    expected = {k: real[k] for k in keep}
    fx = tmp_path / "fx"
    shutil.copytree(fixture_dir, fx)
    for p in fx.iterdir():
        p.chmod(0o644)
    (fx / "expected.json").write_text(json.dumps(expected))
    r = run_cli("parity", fx)
    assert not re.search(r"^parity on .*: PASS", r.stdout, re.M)  # (a busy box's `cpu:` line says PASSIVE)
    one_line_error(r, fx / "expected.json")
