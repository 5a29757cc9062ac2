"""Training: 2 ranks equal 1 rank with accumulation, 2 nodes on loopback, resume, bad input."""

import json
import socket

import pytest
import torch

from conftest import TINY_OVERRIDES, run_cli, torchrun


def _sets(cfg_overrides, corpus_root):
    sets = TINY_OVERRIDES + [
        f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
        f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}"] + cfg_overrides
    return [a for s in sets for a in ("--set", s)]


def _losses(run_dir):
    meta = json.loads((run_dir / "meta.json").read_text())
    return [h["train_loss"] for h in meta["history"]["train"]]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus_root):
    out = tmp_path_factory.mktemp("one")
    r = run_cli("train", "--profile", "smoke", "--out", out, "--device", "cpu", *_sets([], corpus_root))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def test_the_tiny_run_writes_checkpoint_artifact_size_report_and_meta(one_process):
    meta = json.loads((one_process / "meta.json").read_text())
    assert meta["steps"] == 5 and meta["qat_enabled_at_end"]  # late QAT switched on below lr scale 0.6
    assert (one_process / "final_model.pt").is_file() and (one_process / "final_model.int6.ptz").is_file()
    size = json.loads((one_process / "size_report.json").read_text())
    assert size["model_bytes"] == (one_process / "final_model.int6.ptz").stat().st_size
    assert {"commit", "dirty", "torch"} <= set(meta["env"]) and meta["config"]["train"]["iterations"] == 5
    log = (one_process / "train.log").read_text()
    assert "step:5/5 train_loss:" in log and "val_bpb:" in log and "step_avg:" in log


def test_two_gloo_processes_match_one_process_with_accumulation(one_process, tmp_path, corpus_root):
    out = tmp_path / "two"
    r = torchrun("-m", "dyneval", "train", "--profile", "smoke", "--out", out, "--device", "cpu",
                 *_sets([], corpus_root), nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = _losses(one_process), _losses(out)
    assert len(a) == len(b) == 5
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_two_nodes_of_one_process_on_loopback_match_one_process(one_process, tmp_path, corpus_root):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    import subprocess, sys, os
    from conftest import REPO
    out = tmp_path / "nodes"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
               "-m", "dyneval", "train", "--profile", "smoke", "--out", str(out), "--device", "cpu",
               *_sets([], corpus_root)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      cwd=REPO))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    a, b = _losses(one_process), _losses(out)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_a_run_stopped_at_step_k_and_resumed_ends_bitwise_equal(one_process, tmp_path, tiny_cfg):
    from dyneval.train import train
    out = tmp_path / "resumed"
    assert train(tiny_cfg, out, device="cpu", stop_after=2) == {"stopped_at": 2}
    assert (out / "checkpoint.pt").is_file()
    train(tiny_cfg, out, resume=True, device="cpu")
    a = torch.load(one_process / "final_model.pt", weights_only=True)
    b = torch.load(out / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (one_process / "final_model.int6.ptz").read_bytes() == (out / "final_model.int6.ptz").read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--set", "nonsense=1"], "unknown config field 'nonsense'"),
    (["--set", "num_layers=abc"], "model.num_layers: 'abc' is not a valid int"),
    (["--set", "train.data_path=VALONLY"], "no shards match VALONLY/fineweb_train_*.bin"),
    (["--set", "train.tokenizer_path=FIXTOK"], "tokenizer has 1024 pieces but the model's vocab_size is 512"),
])
def test_bad_training_input_gives_a_one_line_error(tmp_path, corpus_root, fixture_dir, args, message):
    import shutil
    valonly = tmp_path / "valonly"
    valonly.mkdir()
    shutil.copy(corpus_root / "datasets" / "embedded_sp1024" / "fineweb_val_000000.bin", valonly)
    args = [a.replace("VALONLY", str(valonly)).replace("FIXTOK", str(fixture_dir / "tokenizer.model")) for a in args]
    message = message.replace("VALONLY", str(valonly))
    base = _sets([], corpus_root)
    if "tokenizer_path" in " ".join(args):
        base += ["--set", "model.vocab_size=512"]
    r = run_cli("train", "--out", tmp_path / "x", "--device", "cpu", *base, *args)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr


def test_a_gpu_count_that_does_not_divide_8_is_refused():
    from dyneval.config import preset
    with pytest.raises(ValueError, match="world size 3 does not divide grad_accum_total=8"):
        preset("record").train.grad_accum_steps(3)


def test_the_run_environment_variables_reach_the_config_through_the_shim():
    from dyneval.config import from_env, preset
    cfg = preset("record").with_overrides(from_env({"NUM_LAYERS": "9", "DYNEVAL_LR": "0.002", "HOME": "/x"}))
    assert cfg.model.num_layers == 9 and cfg.eval.dyneval_lr == 0.002


def test_the_record_preset_is_the_runs_configuration():
    from dyneval.config import preset
    c = preset("record")
    assert (c.model.num_layers, c.model.model_dim, c.model.num_heads, c.model.num_kv_heads) == (11, 512, 8, 4)
    assert (c.model.bigram_vocab_size, c.model.bigram_dim, c.model.xsa_last_n, c.model.rope_dims) == (2048, 128, 4, 16)
    assert (c.train.train_batch_tokens, c.train.train_seq_len, c.train.iterations) == (786_432, 2048, 9000)
    assert (c.train.max_wallclock_seconds, c.train.warmdown_iters, c.train.warmup_steps) == (600, 3000, 20)
    assert (c.optim.matrix_lr, c.optim.tied_embed_lr, c.optim.muon_wd, c.optim.grad_clip_norm) == (0.025, 0.035, 0.042, 0.3)
    assert (c.eval.eval_stride, c.eval.dyneval_lr, c.eval.adapt_every, c.eval.ttt_freeze_blocks) == (64, 0.001, 4, 2)
    assert c.train.grad_accum_steps(8) == 1 and c.train.grad_accum_steps(1) == 8
    assert sum(p.numel() for p in __import__("dyneval.model", fromlist=["GPT"]).GPT(c.model).parameters()) > 26e6


def test_faithful_late_qat_sets_the_flag_but_trains_the_same_weights_as_no_qat(one_process, tmp_path, tiny_cfg):
    """The run's compiled graph never saw its late-QAT flag: faithful training crosses the threshold
    (0.6 in the tiny config) without fake quantization; `qat_trains=1` really trains through it."""
    from dyneval.train import train
    meta = json.loads((one_process / "meta.json").read_text())
    assert meta["qat_enabled_at_end"] and meta["late_qat_step"] is not None and not meta["qat_trained"]
    assert "late_qat:enabled" in (one_process / "train.log").read_text()
    faithful = torch.load(one_process / "final_model.pt", weights_only=True)
    off = train(tiny_cfg.with_overrides({"train.late_qat_threshold": 0}), tmp_path / "off", device="cpu")
    assert not off["qat_enabled_at_end"]
    no_qat = torch.load(tmp_path / "off" / "final_model.pt", weights_only=True)
    assert all(torch.equal(faithful[k], no_qat[k]) for k in faithful)
    train(tiny_cfg.with_overrides({"train.qat_trains": True}), tmp_path / "trains", device="cpu")
    trained = torch.load(tmp_path / "trains" / "final_model.pt", weights_only=True)
    assert any(not torch.equal(faithful[k], trained[k]) for k in faithful)


def test_the_run_s_train_mode_passes_see_the_qat_flag_only_when_training_set_it(one_process, tmp_path, tiny_cfg):
    from dyneval.train import train
    train(tiny_cfg.with_overrides({"train.late_qat_threshold": 0}), tmp_path / "off", device="cpu")
    for run, flag in ((one_process, True), (tmp_path / "off", False)):
        r = run_cli("evaluate", "--run-dir", run, "--variants", "sliding,dynamic", "--out", run / "eval", "--fresh",
                    "--device", "cpu")
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads((run / "eval" / "results.json").read_text())
        assert res["dynamic"]["settings"]["quirks"]["qat_on"] is flag
        assert res["sliding"]["settings"]["quirks"]["qat_on"] is False


def test_the_run_s_switches_reach_the_config_through_the_shim():
    from dyneval.config import from_env, preset, resolve
    env = {"QAT_THRESHOLD": "0.2", "EMA_ENABLED": "0", "TTT_ENABLED": "0", "DYNEVAL_ENABLED": "0", "SWA_ENABLED": "0"}
    c = preset("record").with_overrides(from_env(env))
    assert (c.train.late_qat_threshold, c.train.ema_decay, c.eval.ttt_epochs, c.eval.dyneval_lr) == (0.2, 0, 0, 0)
    assert preset("record").with_overrides(from_env({"LATE_QAT": "0"})).train.late_qat_threshold == 0
    q = preset("record").with_overrides(from_env({"QAT_ENABLED": "1"})).train
    assert q.qat_trains and q.late_qat_threshold > 1
    with pytest.raises(ValueError, match="SWA_ENABLED=1"):
        resolve("record", environ={"SWA_ENABLED": "1"})
def test_record_1gpu_stops_at_the_published_step_count_of_its_seed():
    from dyneval.config import published_iterations, resolve
    load = lambda profile, sets: resolve(profile, overrides=sets).config  # noqa: E731
    assert [published_iterations(s) for s in (42, 7, 2024, 1337)] == [5604, 5590, 5620, 5604]
    assert load("record_1gpu", ["train.seed=7"]).train.iterations == 5590
    assert load("record_1gpu", ["seed=2024"]).train.iterations == 5620
    assert load("record_1gpu", ["train.seed=5"]).train.iterations == 5604
    assert load("record_1gpu", ["train.seed=7", "iterations=300"]).train.iterations == 300  # explicit wins
    assert load("record", ["train.seed=7"]).train.iterations == 9000  # the 8-GPU record stops on the clock


def test_a_record_1gpu_notebook_config_takes_its_seeds_published_step_count():
    from dyneval.notebook import make_config
    assert make_config("record_1gpu", 2024).train.iterations == 5620
    assert make_config("record_1gpu", 7, "train.iterations=10").train.iterations == 10
    assert make_config("smoke", 7).train.iterations == 150
