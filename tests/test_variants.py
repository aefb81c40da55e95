"""The benchmark's serial consistency on hand-made outputs, with the stand-in judges of
test_rewards (ground truth grounder, colour-histogram encoder)."""
from __future__ import annotations

import numpy as np
import pytest

from components import world
from components.benchmark.scoring import BenchRow
from components.benchmark.variants import serial_consistency
from components.judging.base import JudgeSet
from components.world.render import Placement, Scene
from tests.test_rewards import CAT_RED, ConstantAesthetic, HistogramEncoder, Truth, TruthGrounder, TruthSemantic


def _row(rid: str, category: str) -> BenchRow:
    return BenchRow(rid, "serial", f"the {category} from image 1", [np.zeros((32, 32, 3), np.uint8)],
                    {"refs": [np.zeros((32, 32, 3), np.uint8)], "categories": [category], "claims": []})


@pytest.fixture
def judges_and_truth():
    truth = Truth()
    return JudgeSet(HistogramEncoder(), TruthGrounder(truth), TruthSemantic(truth), ConstantAesthetic()), truth


def _draw(truth, identity, background="snow", x=0.5):
    return truth.render(Scene(background, 1, (Placement(identity, x, 0.5, "medium", "upright", 0.4),)))


def test_a_series_drawing_one_subject_alike_is_consistent_and_a_miss_counts_zero(judges_and_truth):
    judges, truth = judges_and_truth
    same = [_draw(truth, CAT_RED, x=x) for x in (0.3, 0.5, 0.7)]
    empty = truth.render(Scene("snow", 1, ()))
    rows = [_row(f"serial-0000-{p}", "cat") for p in range(3)] + [_row(f"serial-0001-{p}", "cat") for p in range(3)]
    out = serial_consistency(rows, same + [same[0], same[1], empty], judges, 32).set_index("series")
    assert out.loc["serial-0000", "consistency"] == pytest.approx(1.0, abs=0.01)  # up to the crops' resampling
    # pairs (0,1), (0,2), (1,2): only (0,1) has both subjects found
    assert out.loc["serial-0001", "consistency"] == pytest.approx(1.0 / 3, abs=0.01)
    assert out.loc["serial-0001", "found"] == pytest.approx(2 / 3)


def test_a_series_drawing_another_identity_each_time_is_less_consistent(judges_and_truth):
    judges, truth = judges_and_truth
    drifting = [_draw(truth, CAT_RED), _draw(truth, world.Identity("cat", ("blue", "green"), "solid", "none")),
                _draw(truth, world.Identity("cat", ("white", "black"), "solid", "none"))]
    rows = [_row(f"serial-0000-{p}", "cat") for p in range(3)]
    assert serial_consistency(rows, drifting, judges, 32).consistency.iloc[0] < 0.5
