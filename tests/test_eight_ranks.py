"""Eight real ranks: torchrun with 8 gloo processes, as the record runs on 8 GPUs (models and step counts
kept minimal: 8 processes share the CI machine's cores)."""

import json

import numpy as np

from conftest import TINY_OVERRIDES, run_cli, torchrun
from test_adapt import RANK_LOCAL, fixture_config

EIGHT = ["train.grad_accum_total=8", "train.train_batch_tokens=1024"]  # one 128-token sequence per rank and step


def _sets(corpus_root, extra=()):
    sets = TINY_OVERRIDES + [f"train.data_path={corpus_root / 'datasets' / 'embedded_sp1024'}",
                             f"train.tokenizer_path={corpus_root / 'tokenizers' / 'embedded_1024_bpe.model'}",
                             *EIGHT, *extra]
    return [a for s in sets for a in ("--set", s)]


def test_eight_gloo_processes_train_within_1e_3_bpb_of_one_process_with_8_way_accumulation(corpus_root, tmp_path):
    """Where the bits part: the gradient is summed by DDP's all-reduce over 8 ranks (a tree of float
    additions) instead of accumulated micro-step by micro-step into one buffer, and the loss average over
    ranks is summed in another order; 2 processes are bitwise one (tests/test_train.py), 8 are not."""
    one = run_cli("train", "--profile", "smoke", "--out", tmp_path / "one", "--device", "cpu", *_sets(corpus_root))
    assert one.returncode == 0, one.stderr[-3000:]
    eight = torchrun("-m", "dyneval", "train", "--profile", "smoke", "--out", tmp_path / "eight", "--device", "cpu",
                     *_sets(corpus_root), nproc=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "meta.json").read_text())
    b = json.loads((tmp_path / "eight" / "meta.json").read_text())
    assert b["env"]["world_size"] == 8 and a["steps"] == b["steps"] == 5
    print("int6 round-trip bpb: 1 process", a["int6_roundtrip"]["bpb"], "8 processes", b["int6_roundtrip"]["bpb"])
    assert abs(a["int6_roundtrip"]["bpb"] - b["int6_roundtrip"]["bpb"]) < 1e-3


def _compare_streams(a_dir, b_dir, names):
    """Per-window streams equal: bitwise for every column but `nats` of the rank-local chains, which agree to
    rtol 1e-7 (the tolerance tests/test_adapt.py established for the run's dynamic eval); `rank` only where
    both split the windows over the same ranks."""
    worst = {}
    for name in names:
        a = np.load(a_dir / f"{name}.npz")
        b = np.load(b_dir / f"{name}.npz")
        same_split = name not in ("pre_eval_ttt", "pre_eval_ttt+nonoverlap")  # scored by the real ranks after TTT
        for k in a.files:
            if k == "nats":
                assert np.allclose(a[k], b[k], rtol=1e-7, atol=0), (name, k)
                worst[name] = float(np.max(np.abs(a[k] - b[k]) / np.abs(a[k])))
            elif k != "rank" or same_split:
                assert np.array_equal(a[k], b[k]), (name, k)
    return worst


def test_eight_real_processes_evaluate_every_rank_local_variant_as_eight_virtual_ranks_and_two_by_four(
        fixture_dir, tmp_path):
    """Stride 48 over 2,048 targets: 43 windows, which 8 ranks split 5 or 6 each (not divisible by 8)."""
    cfg = fixture_config(fixture_dir, **{"eval.eval_stride": 48, "eval.ranks": 8})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    common = ["evaluate", "--artifact", fixture_dir / "final_model.int6.ptz", "--config", tmp_path / "cfg.json",
              "--variants", ",".join(RANK_LOCAL), "--device", "cpu"]
    v = run_cli(*common, "--virtual-ranks", "8", "--out", tmp_path / "virtual")
    assert v.returncode == 0, v.stderr[-2000:]
    r = torchrun("-m", "dyneval", *common, "--out", tmp_path / "real", nproc=8)
    assert r.returncode == 0, r.stderr[-3000:]
    r2 = torchrun("-m", "dyneval", *common, "--virtual-ranks", "8", "--out", tmp_path / "two_by_four", nproc=2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    windows = json.loads((tmp_path / "virtual" / "results.json").read_text())["dynamic"]["windows"]
    assert windows == 43 and windows % 8
    print("8 real vs 8 virtual, worst relative nats difference per variant:",
          _compare_streams(tmp_path / "virtual", tmp_path / "real", RANK_LOCAL))
    print("2 real x 4 virtual vs 8 virtual:",
          _compare_streams(tmp_path / "virtual", tmp_path / "two_by_four", RANK_LOCAL))
    res = {d: json.loads((tmp_path / d / "results.json").read_text()) for d in ("virtual", "real", "two_by_four")}
    for name in RANK_LOCAL:
        assert res["real"][name]["settings"]["ranks"] == res["two_by_four"][name]["settings"]["ranks"] == 8, name
