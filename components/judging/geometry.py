"""Box geometry rules: PSRBench checks Position claims with rules on grounded boxes, not a model."""
from __future__ import annotations

from .base import Box


def relation_from_boxes(a: Box, b: Box) -> str:
    """The relation of box a to box b ("left of", "right of", "above", "below") along the axis
    where their centres are further apart, as world.scenes.relation_of does with placements."""
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"
