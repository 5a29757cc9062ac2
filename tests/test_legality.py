"""`python -m dyneval legality`: the prefix-invariance check on a run, for the registry and for plugins."""

import json

import numpy as np
import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli
from dyneval import legality
from dyneval.config import preset

PLUGIN = REPO / "docs" / "examples" / "chunk_ttt_plugin.py"
NOT_LEGAL = ["pre_eval_ttt", "pre_eval_ttt+nonoverlap", "pre_eval_ttt+dynamic"]


def test_on_a_run_every_legal_variant_is_prefix_invariant_and_the_pre_eval_ttt_variants_are_not(tiny_run, tmp_path):
    r = run_cli("legality", "--run-dir", tiny_run, "--variants", "all", "--device", "cpu", "--json", tmp_path / "l.json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    lines = {ln.split(":")[0]: ln for ln in r.stdout.splitlines() if ln.split(":")[0] in legality_names()}
    for name, v in registry().items():
        if v.legal and v.rule != "both":  # score-before-update only: its prefix check is shown, never fails the run
            assert lines[name].startswith(name) and lines[name].endswith("[marked legal: score-before-update only]")
        elif v.legal:
            assert lines[name].startswith(f"{name}: prefix-invariant"), lines[name]
        else:
            assert lines[name].startswith(f"{name}: NOT prefix-invariant (first differing window "), lines[name]
            assert "tokens affected" in lines[name]
    assert "legality: PASS" in r.stdout
    report = json.loads((tmp_path / "l.json").read_text())
    assert report["ok"] and report["replacement"]["bos_positions_kept"] is False and len(report["prefixes"]) == 3
    for name in NOT_LEGAL:
        check = report["variants"][name]["checks"][0]
        assert check["first_window"]["index"] == 0 and check["tokens_affected"] > 0  # the TTT moved every score
    assert all(c["windows_before"] > 0 and c["after_changed"] for v in report["variants"].values() for c in v["checks"])


def registry():
    from dyneval.variants import VARIANTS
    return VARIANTS


def legality_names():
    return set(registry()) | {"chunk_score_then_train", "chunk_train_then_score"}


def test_a_plugin_that_trains_on_its_chunk_before_scoring_it_is_caught_by_the_default_prefixes_only(tiny_run):
    """The peeking variant looks only inside its own chunk: P on a chunk boundary (1024) misses it."""
    r = run_cli("legality", "--run-dir", tiny_run, "--plugin", PLUGIN, "--device", "cpu")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "chunk_score_then_train: prefix-invariant" in r.stdout
    assert "chunk_train_then_score: NOT prefix-invariant (first differing window" in r.stdout
    assert "legality: FAIL: marked legal but not shown prefix-invariant: chunk_train_then_score" in r.stdout
    blind = run_cli("legality", "--run-dir", tiny_run, "--plugin", PLUGIN, "--variants", "chunk_train_then_score",
                    "--prefix", "1024", "--device", "cpu")
    assert blind.returncode == 0 and "chunk_train_then_score: prefix-invariant" in blind.stdout, blind.stdout[-2000:]


@pytest.mark.parametrize("profile", ["smoke", "record", "gpu_smoke", "tiny"])
def test_default_prefixes_lie_on_no_stride_batch_adaptation_period_or_chunk_boundary(profile):
    cfg = preset("smoke").with_overrides(TINY_OVERRIDES) if profile == "tiny" else preset(profile)
    n = cfg.eval.max_val_tokens - 1 if cfg.eval.max_val_tokens else 62_021_632
    prefixes = legality.default_prefixes(n, cfg.eval)
    assert len(set(prefixes)) == 3 and all(cfg.eval.eval_seq_len < p < n - 1 for p in prefixes)
    for p in prefixes:
        assert all(p % period for period in legality.periods(cfg.eval).values()), (p, legality.periods(cfg.eval))
        assert p % 2 and p % 3 and p % 5


def _stream(nats, stride=4, first=8):
    k = len(nats)
    starts = np.arange(k) * stride
    return {"window_start": starts, "first_scored": np.where(starts == 0, 0, starts + first - stride),
            "num_scored": np.where(starts == 0, first, stride), "nats": np.asarray(nats, dtype=np.float64),
            "bytes": np.ones(k), "rank": np.zeros(k, dtype=np.int64)}


def test_the_comparison_names_the_first_window_before_p_that_differs_and_the_tokens_it_scores():
    base = _stream([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # windows end at tokens 8, 12, 16, 20, 24, 28: with P = 17 the first three lie before P
    same = legality.compare_streams(base, _stream([1.0, 2.0, 3.0, 9.0, 9.0, 9.0]), 17)
    assert same.invariant and same.conclusive and (same.windows_before, same.tokens_before) == (3, 16)
    peek = legality.compare_streams(base, _stream([1.0, 2.0 + 1e-12, 3.5, 9.0, 9.0, 9.0]), 17)
    assert not peek.invariant and peek.differing_windows == 2 and peek.tokens_affected == 8
    assert peek.first_window == {"index": 1, "window_start": 4, "first_scored": 8, "num_scored": 4}
    blind = legality.compare_streams(base, _stream([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 17)
    assert blind.invariant and not blind.conclusive  # nothing after P changed: the check proves nothing


def test_replaced_tokens_are_never_bos_and_the_prefix_is_kept():
    import torch
    tokens = torch.randint(0, 1024, (5000,))
    tokens[::50] = 1
    other = legality.replace_after(tokens, 1999, 1024)
    assert torch.equal(other[:2000], tokens[:2000])
    assert int(other[2000:].min()) >= legality.FIRST_ORDINARY_ID and (other[2000:] != tokens[2000:]).float().mean() > 0.99


@pytest.mark.parametrize("args, message", [
    (["--plugin", "NOFILE"], "--plugin NOFILE: no such file"),
    (["--plugin", "EMPTY"], "define VARIANTS = [dyneval.variants.Variant(...), ...]"),
    (["--variants", "sliding,nosuch"], "unknown variant(s) ['nosuch']"),
    (["--variants", "sliding", "--prefix", "5"], "--prefix 5: must lie between eval_seq_len (128"),
])
def test_bad_legality_input_gives_a_one_line_error(tiny_run, tmp_path, args, message):
    (tmp_path / "empty.py").write_text("x = 1\n")
    args = [a.replace("NOFILE", str(tmp_path / "none.py")).replace("EMPTY", str(tmp_path / "empty.py")) for a in args]
    r = run_cli("legality", "--run-dir", tiny_run, "--device", "cpu", *args)
    assert r.returncode == 2 and message.replace("NOFILE", str(tmp_path / "none.py")) in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
