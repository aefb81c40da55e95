"""A generator folder's sampling settings: recorded, read back, overridden only where a caller says."""
from __future__ import annotations

import pytest

from components.models.sampling import SamplingSettings


def test_settings_round_trip_and_override_only_what_is_given(tmp_path):
    assert SamplingSettings.load(tmp_path) == SamplingSettings(20, 1.0, "as_given")  # a folder that records none
    SamplingSettings(12, 2.5, "slots").save(tmp_path)
    recorded = SamplingSettings.load(tmp_path)
    assert recorded == SamplingSettings(12, 2.5, "slots")
    assert recorded.override() == recorded
    assert recorded.override(steps=4) == SamplingSettings(4, 2.5, "slots")
    assert recorded.override(guidance=1.0) == SamplingSettings(12, 1.0, "slots")
    assert recorded.precision == "fp32"  # what a folder recorded before the bf16 sampler reads as
    assert recorded.override(precision="bf16") == SamplingSettings(12, 2.5, "slots", "bf16")
    SamplingSettings(12, 2.5, "slots", "bf16").save(tmp_path)
    assert SamplingSettings.load(tmp_path).precision == "bf16"


@pytest.mark.parametrize("bad", [dict(steps=0), dict(guidance=0.5), dict(reference_layout="grid"),
                                 dict(precision="fp16")])
def test_nonsense_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
