"""Report: the record criterion's statistics, and the published run beside a reproduced one."""

import json
from pathlib import Path

import pytest


def _runs(deltas_nats, variant="dynamic_tail_mlp"):
    """Crafted per-seed results: sliding at 2.0 nats, `variant` at 2.0 + Δ."""
    runs = {}
    for i, d in enumerate(deltas_nats):
        res = {"sliding": {"loss": 2.0, "bpb": 1.2, "seconds": 1.0, "legal": True},
               variant: {"loss": 2.0 + d, "bpb": 1.2 + d / 1.7, "seconds": 1.0, "legal": True}}
        runs[i] = {"meta": {"size": {"total_bytes": 1}}, "results": res, "dir": Path(".")}
    return runs


def _row(rows, variant="dynamic_tail_mlp"):
    return next(r for r in rows if r["variant"] == variant)


def test_deltas_barely_past_the_bar_do_not_meet_the_record_criterion():
    from dyneval.report import aggregate
    row = _row(aggregate(_runs([-0.00505, -0.0055, -0.00517])))
    # mean -0.00524 nats beats 0.005 and is far below 0, but not significantly below -0.005
    assert row["p_value"] < 0.01 and row["p_value_record"] > 0.01
    assert not row["meets_record_criterion"]


def test_deltas_well_past_the_bar_meet_the_record_criterion():
    from dyneval.report import aggregate
    row = _row(aggregate(_runs([-0.010, -0.011, -0.0105])))
    assert row["p_value_record"] < 0.01 and row["meets_record_criterion"]


def test_the_ablation_table_shows_both_p_values():
    from dyneval.report import aggregate, markdown, per_seed_rows
    runs = _runs([-0.00505, -0.0055, -0.00517])
    text = markdown(runs, aggregate(runs), per_seed_rows(runs))
    assert "p vs 0" in text and "p vs −0.005" in text
    line = next(l for l in text.splitlines() if l.startswith("| dynamic_tail_mlp"))
    assert "met" not in line


def _fake_run(root, profile, seed=42):
    """A seed folder as reproduce leaves it, with a short history and no streams."""
    from dyneval.config import resolve
    load = lambda profile, sets: resolve(profile, overrides=sets).config  # noqa: E731
    d = root / f"seed{seed}"
    (d / "eval").mkdir(parents=True)
    steps = {42: 5604, 7: 5590, 2024: 5620}.get(seed, 5604)  # within the published range, as the record's runs
    meta = {"config": load(profile, [f"train.seed={seed}"]).to_dict(), "steps": steps, "tokenizer_sha256": "ab" * 32,
            "size": {"model_bytes": 15_500_000, "code_bytes": 190_000, "total_bytes": 15_690_000},
            "history": {"train": [{"step": s, "train_loss": l} for s, l in ((1, 6.93), (200, 2.5), (steps, 2.4))],
                        "val": [{"step": 0, "val_bpb": 4.1}, {"step": steps, "val_bpb": 1.42}]}}
    res = {v: {"loss": 2.0 - i * 0.01, "bpb": 1.2 - i * 0.01, "seconds": 1.0, "legal": "ttt" not in v}
           for i, v in enumerate(("sliding", "pre_eval_ttt+nonoverlap", "pre_eval_ttt+dynamic"))}
    (d / "meta.json").write_text(json.dumps(meta))
    (d / "eval" / "results.json").write_text(json.dumps(res))
    return d


def test_the_published_logs_ship_with_the_package_and_name_their_source():
    from dyneval.published_run import load_published
    logs = load_published()
    assert "PR #397" in logs["source"] and set(logs["seeds"]) == {"42", "7", "2024"}
    assert logs["seeds"]["42"]["final"]["final_dyneval_exact"]["val_bpb"] == pytest.approx(1.1364, abs=1e-4)


def test_a_record_profile_report_puts_the_published_run_beside_the_reproduced_one(tmp_path):
    from dyneval.report import build_report
    _fake_run(tmp_path / "runs", "record_1gpu")
    r = build_report(tmp_path / "runs", tmp_path / "fig")
    text = (tmp_path / "fig" / "ablation.md").read_text()
    section = text[text.index("## The published run"):]
    assert "seed 42" in section and "1.1364" in section and "5,604" in section and "15,572,915" in section
    assert (tmp_path / "fig" / "training_curves.png").stat().st_size > 5000 and r["figures"]


def test_the_training_figure_overlays_the_published_curves_only_for_record_profiles(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dyneval.figures import plot_training_curves
    from dyneval.report import NOT_COMPARABLE, published_curves
    for profile, shown in (("record_1gpu", True), ("record", True), ("smoke", False)):
        meta = json.loads((_fake_run(tmp_path / profile, profile, seed=7) / "meta.json").read_text())
        fig, (a, b) = plt.subplots(1, 2)
        published, note = published_curves({7: meta})
        plot_training_curves(a, b, {7: meta}, published)
        labels = [l.get_label() for l in a.get_lines() + b.get_lines()]
        assert any(l.startswith("published") for l in labels) == shown, profile
        assert (note == NOT_COMPARABLE) != shown
        plt.close(fig)


def test_a_smoke_report_says_in_a_sentence_why_nothing_published_is_shown(tmp_path):
    from dyneval.report import NOT_COMPARABLE, build_report, published_markdown
    d = _fake_run(tmp_path / "runs", "smoke")
    build_report(tmp_path / "runs", tmp_path / "fig")
    assert NOT_COMPARABLE in (tmp_path / "fig" / "ablation.md").read_text()
    assert published_markdown(json.loads((d / "meta.json").read_text())).strip() == NOT_COMPARABLE


def test_an_unpublished_seed_is_compared_with_the_published_mean():
    from dyneval.config import resolve
    load = lambda profile, sets: resolve(profile, overrides=sets).config  # noqa: E731
    from dyneval.published_run import published_comparison
    meta = {"config": load("record_1gpu", ["train.seed=1337"]).to_dict(), "steps": 5604, "tokenizer_sha256": "ab" * 32}
    rows = published_comparison(meta)
    assert rows[0]["published_as"] == "mean of seeds 42, 7, 2024"
    assert rows[0]["published"] == pytest.approx((5604 + 5590 + 5620) / 3)
