"""The procedural subject world: subjects with known identities, scenes with known layout,
and a renderer that returns every ground-truth fact (mask, box, category, pose) with the image."""
from .render import SIZES, Placement, Rendered, Scene, render
from .scenes import (
    TASKS,
    Sample,
    sample_single,
    sample_standardize,
    sample_task,
    serial_sample,
    standard_view,
    with_wild_references,
)
from .subjects import CATEGORIES, CHARACTER, OBJECT_CATEGORIES, Identity, identity_pool, is_heldout

__all__ = [
    "CATEGORIES", "CHARACTER", "OBJECT_CATEGORIES", "SIZES", "TASKS", "Identity", "Placement", "Rendered",
    "Sample", "Scene", "identity_pool", "is_heldout", "render", "sample_single", "sample_standardize",
    "sample_task", "serial_sample", "standard_view", "with_wild_references",
]
