"""PSR's multi-subject data bootstrapping, as a library: ``redraw`` (crops handed to the
single-subject model, its redraws judged, rejection sampling scene by scene), ``recompose``
(many-subject pairs rendered anew from identities that passed) and ``pairs`` (the whole pass,
gated and published with its reports). The multisubject stage (``components/multisubject.py``)
calls ``pairs.bootstrap``."""
import re

SPLIT = "multisubject"  # the bootstrapped dataset's split name (manifest column and sample ids)


def recomposed_id(task: str, i: int) -> str:
    """The manifest id of the ``i``-th pair recomposed for ``task``."""
    return f"{SPLIT}-{task.lower()}-{i:06d}"


def is_recomposed(row_id: str) -> bool:
    """Whether a ``multisubject`` row was recomposed (``recompose``): with the ``slots`` layout, its
    references are the ones packed into their slots (the redrawn scenes' stay as drawn)."""
    return re.fullmatch(rf"{SPLIT}-[a-z]+-\d{{6,}}", row_id) is not None
