"""What every params.yaml section is: a frozen pydantic model that forbids unknown keys."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..world import TASKS


def known_tasks(weights: dict[str, float], what: str) -> dict[str, float]:
    """``weights`` keyed by PSR task (= benchmark subset) names, or a ValueError naming the others."""
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; allowed: {list(TASKS)}")
    return weights


class ParamsError(ValueError):
    """params.yaml is malformed or names what cannot be found; the message names the file, the
    key and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
