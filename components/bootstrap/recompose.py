"""Recomposing many-subject pairs: new scenes of the world rendered with only the identities whose
reference passed, each subject handed one of its passing references; with the ``slots`` layout,
subject k and its packed reference both in slot k (``models/layout.py``)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import world
from ..config import Params
from ..models import layout
from ..world import Identity
from ..world.scenes import N_SUBJECTS
from . import SPLIT, recomposed_id


def in_slots(sample: world.Sample, refs: list[tuple[np.ndarray, list[int], str]],
             rng: np.random.Generator) -> tuple[world.Sample, list[tuple[np.ndarray, list[int], str]]]:
    """The sample with subject k moved to slot k of the ``slots`` reference layout (jittered) and
    reference k packed into the same slot, its subject box with it (``models/layout.py``). Only
    positions change: a Three or Four prompt does not state them."""
    n = len(refs)
    centres = layout.slot_centres(n, rng)
    placements = tuple(replace(p, cx=x, cy=y) for p, (x, y) in zip(sample.target.placements, centres))
    packed = [(layout.pack(image, k, n), layout.pack_box(box, k, n, image.shape[0]), desc)
              for k, (image, box, desc) in enumerate(refs)]
    return replace(sample, target=replace(sample.target, placements=placements)), packed


def recompose(params: Params, passed: dict[str, list[tuple[np.ndarray, list[int], str]]], counts: dict[str, int],
              seed: int, root: Path) -> list[dict]:
    """New scenes of the world for ``counts`` tasks, rendered (targets, masks, claims as in
    ``synthesize``) with only identities that have a passing reference, each subject given one
    of its passing references. A reference passed the encoder's test against its identity in
    another scene, so it stands for that identity in any scene: the pairs a many-subject scene
    yields only when all of its k subjects pass come here from subjects that passed anywhere.
    With ``multisubject.recompose_layout: slots`` only re-centred references are handed over, and
    each scene is laid out by :func:`in_slots`. Manifest rows (written under ``root``), ids
    ``multisubject-<task>-<i>``."""
    from ..data.synthesis import write_sample

    slots = params.multisubject.recompose_layout == "slots"
    if slots:  # a packed reference must show its subject centred before it is shrunk into its slot
        recentred = {i: [r for r in refs if not json.loads(r[2])["in_place"]] for i, refs in passed.items()}
        passed = {i: refs for i, refs in recentred.items() if refs}
    idents = [Identity.from_id(i) for i in sorted(passed)]
    pool = {c: tuple(i for i in idents if i.category == c) for c in sorted({i.category for i in idents})}
    rng = np.random.default_rng([seed, 7])  # its own stream: the redraws' draws stay as they were
    rows = []
    for task, n in counts.items():
        if len(pool) < N_SUBJECTS[task]:
            print(f"multisubject: WARNING {task} needs {N_SUBJECTS[task]} categories with a passing reference, "
                  f"{len(pool)} have one; none recomposed", flush=True)
            continue
        for i in range(n):
            sid = recomposed_id(task, i)
            for _ in range(100):  # a draw whose subject hides behind another is drawn again
                sample = world.sample_task(rng, task, pool)
                refs = [passed[p.identity.id][int(rng.integers(len(passed[p.identity.id])))]
                        for p in sample.target.placements]
                if slots:
                    sample, refs = in_slots(sample, refs, rng)
                try:
                    rows.append(write_sample(params.synthesize, SPLIT, sid, sample, root, refs))
                    break
                except RuntimeError:
                    continue
    return rows
