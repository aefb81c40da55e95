"""PSR's multi-subject data bootstrapping, as a library: ``redraw`` (crops handed to the
single-subject model, its redraws judged, rejection sampling scene by scene), ``recompose``
(many-subject pairs rendered anew from identities that passed) and ``pairs`` (the whole pass,
gated and published with its reports). The multisubject stage (``components/multisubject.py``)
calls ``pairs.bootstrap``."""

SPLIT = "multisubject"  # the bootstrapped dataset's split name (manifest column and sample ids)
