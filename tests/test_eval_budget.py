"""The eval-time frontier: Δ bpb against evaluation seconds, with the 600 s cap only for 8 real GPUs."""

import json

import pytest

VARIANTS = {  # name: (legal, Δ bpb, seconds), shaped like the smoke table
    "nonoverlap": (True, 0.0097, 0.9), "sliding": (True, 0.0, 3.3), "pre_eval_ttt": (False, -0.0109, 12.2),
    "dynamic": (True, 0.0008, 3.8), "dynamic_tail": (True, -0.0067, 6.4), "score_first_ttt": (True, -0.0006, 11.0),
    "dynamic_krause": (True, -0.0379, 7.6)}


def _runs(root, device="cpu", world=1, virtual=0, seeds=(42, 7)):
    """Seed folders as reproduce leaves them, with results.json entries recording their hardware."""
    for i, seed in enumerate(seeds):
        d = root / f"seed{seed}"
        (d / "eval").mkdir(parents=True)
        meta = {"config": {"train": {"seed": seed}}, "size": {"total_bytes": 1},  # comparable seeds (report.py)
                "history": {"train": [{"step": 1, "train_loss": 7.0}], "val": [{"step": 1, "val_bpb": 3.0}]}}
        res = {n: {"bpb": 2.0 + d_ + i * 1e-4, "loss": 1.4 + d_ * 1.7, "seconds": s * (1 + 0.05 * i), "legal": legal,
                   "rank_local": n not in ("nonoverlap", "sliding"), "world_size": world, "cpu_threads": 2,
                   "backends": {"device": device}, "settings": {"real_ranks": world, "virtual_ranks": virtual}}
               for n, (legal, d_, s) in VARIANTS.items()}
        (d / "meta.json").write_text(json.dumps(meta))
        (d / "eval" / "results.json").write_text(json.dumps(res))
    return root


@pytest.mark.parametrize("device, world, virtual, cap", [
    ("cpu", 1, 0, False),  # the smoke profile: CPU seconds
    ("NVIDIA H100 80GB HBM3", 1, 8, False),  # record_1gpu: 8 ranks emulated on one GPU
    ("NVIDIA H100 80GB HBM3", 8, 0, True),  # the challenge's setting
    ("NVIDIA H100 80GB HBM3", 4, 0, False),
])
def test_the_eval_budget_figure_is_written_and_draws_the_600_s_cap_only_for_8_real_gpus(tmp_path, device, world,
                                                                                          virtual, cap):
    from dyneval.report import build_report
    r = build_report(_runs(tmp_path / "runs", device, world, virtual), tmp_path / "fig")
    png, svg = tmp_path / "fig" / "eval_budget.png", tmp_path / "fig" / "eval_budget.svg"
    assert str(png) in r["figures"] and png.stat().st_size > 10_000
    text = svg.read_text()
    assert ('id="challenge_cap"' in text) == cap
    assert ("No 600 s cap line" in text) != cap  # otherwise the figure says why it has none
    if device == "cpu":
        assert "evaluation seconds on the CPU (2 threads" in text and "these are CPU seconds" in text
    if virtual:
        assert "8 ranks emulated" in text and "not 8-GPU seconds" in text


def test_the_legal_front_keeps_the_legal_variants_no_other_legal_one_beats_on_seconds_and_delta():
    from dyneval.stats import legal_front
    rows = [{"variant": n, "legal": legal, "delta_bpb_mean": d, "eval_seconds_mean": s}
            for n, (legal, d, s) in VARIANTS.items()]
    assert [r["variant"] for r in legal_front(rows)] == ["nonoverlap", "sliding", "dynamic_tail", "dynamic_krause"]
