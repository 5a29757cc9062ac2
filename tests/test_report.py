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
