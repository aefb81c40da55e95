"""Kill -9 at random moments of each training stage (checkpoint writes included): every rerun
ends with the uninterrupted run's weights, metrics, history and grids, and leaves nothing
behind. A short run of tests/scripts/kill_soak.py; the full soak is its command line."""
from __future__ import annotations

import pytest

from tests.scripts import kill_soak


@pytest.mark.slow
def test_random_kills_of_every_training_stage_rerun_to_the_uninterrupted_result(tmp_path):
    root = kill_soak.make_project(tmp_path / "project")
    report = kill_soak.soak(root, ["judges", "pretrain", "sft"], trials=2, kills=(1, 2), seed=7, log=lambda m: None)
    assert {s: r["failures"] for s, r in report.items()} == {"judges": [], "pretrain": [], "sft": []}
    assert all(r["trials"] == 2 for r in report.values())
    assert sum(r["kills"] for r in report.values()) >= 3  # most starts are killed, not outrun
