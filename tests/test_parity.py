"""Parity with the run's own numerics, through the generic fixture command."""

import json
import os
import re
import shutil

import pytest
import torch

from conftest import COMPACT, PARITY_FIXTURES, REPO, run_cli


@pytest.mark.parametrize("fixture", PARITY_FIXTURES, ids=lambda p: p.name)
def test_parity_command_passes_every_entry_of_the_reference_fixture(fixture):
    r = run_cli("parity", fixture)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout and "PASS" in r.stdout


def test_parity_with_no_argument_checks_the_compact_fixture_shipped_in_an_installed_package(tmp_path):
    """What a user runs after a plain `pip install .`: the wheel carries the fixture as package data."""
    import subprocess
    import sys

    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            tmp_path / "wheel", REPO], capture_output=True, text=True, cwd=tmp_path)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site,
                              *(tmp_path / "wheel").glob("dyneval-*.whl")], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "dyneval", "parity"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(site)}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    shipped = site / "dyneval" / "fixtures" / "compact397"
    assert f"parity on {shipped}: PASS" in r.stdout
    passed = int(re.search(r"^(\d+) passed, 0 failed$", r.stdout, re.M).group(1))
    assert passed >= len(json.loads((COMPACT / "expected.json").read_text()))  # every entry, some in several rows


def test_parity_write_without_a_directory_is_refused_and_leaves_the_shipped_fixture_alone():
    before = (COMPACT / "expected.json").read_bytes()
    r = run_cli("parity", "--write")
    assert r.returncode != 0 and "name the fixture directory" in r.stderr
    assert (COMPACT / "expected.json").read_bytes() == before


def _writable_copy(fixture_dir, dest):
    shutil.copytree(fixture_dir, dest)
    for p in dest.iterdir():
        p.chmod(0o644)
    return dest


def test_parity_command_fails_when_an_expected_value_is_off(fixture_dir, tmp_path):
    bad = _writable_copy(fixture_dir, tmp_path / "fx")
    exp = json.loads((bad / "expected.json").read_text())
    keep = {"eval_val", "val_tokens_used"}
    exp = {k: v for k, v in exp.items() if k in keep}
    exp["eval_val"] = [exp["eval_val"][0] + 1e-3, exp["eval_val"][1]]
    (bad / "expected.json").write_text(json.dumps(exp))
    r = run_cli("parity", bad)
    assert r.returncode == 1
    assert "eval_val loss" in r.stdout and "NO" in r.stdout


def test_parity_command_runs_a_fixture_with_other_shape_settings(fixture_dir, tmp_path):
    """Untied head, no bigram table, full RoPE, XSA on every layer, odd layers, ln_scale off, other stride."""
    from dyneval import quant
    from dyneval.config import ModelConfig
    from dyneval.model import GPT

    fx = _writable_copy(fixture_dir, tmp_path / "other")
    s = json.loads((fx / "settings.json").read_text())
    s["model"].update(num_layers=3, tie_embeddings=False, bigram_vocab_size=0, rope_dims=0, xsa_last_n=3,
                      ln_scale=False, model_dim=128, num_heads=4, num_kv_heads=4)
    s.update(stride=64, dyneval_lr=0.003, adapt_every=3)
    (fx / "settings.json").write_text(json.dumps(s))
    torch.manual_seed(3)
    m = GPT(ModelConfig(**s["model"]))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(m.state_dict(), fx / "trained.pt")
    quant.write_artifact(fx / "final_model.int6.ptz", m.state_dict())
    w = run_cli("parity", fx, "--write")
    assert w.returncode == 0, w.stderr
    exp = json.loads((fx / "expected.json").read_text())
    assert "lm_head.weight" in exp["params_after_3_steps"] and "bigram.embed.weight" not in exp["quant_meta"]
    # What --write wrote, checked against rules computed here, not by the library:
    import numpy as np
    header = np.fromfile(fx / "fineweb_val_000000.bin", dtype="<i4", count=256)
    L = s["seq_len"]
    assert exp["val_tokens_used"] == (int(header[2]) - 1) // L * L + 1  # trimmed to a multiple of L, plus one
    state = torch.load(fx / "trained.pt", weights_only=True)
    for name, t in state.items():  # docs/NUMERICS.md 'The artifact': small tensors pass through, big tables int8, matrices int6
        kind = "passthrough" if t.numel() <= 65_536 else ("int8" if "tok_emb" in name or "lm_head" in name else "int6")
        assert exp["quant_meta"][name] == kind, name
    ok = run_cli("parity", fx)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    exp["eval_val_sliding_dynamic"][1] += 5e-4  # outside the 2e-4 tolerance
    (fx / "expected.json").write_text(json.dumps(exp))
    bad = run_cli("parity", fx)
    assert bad.returncode == 1 and "eval_val_sliding_dynamic bpb" in bad.stdout
