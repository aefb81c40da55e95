"""The standardizer stage's run: the reference analyser, then the standardizer itself (an
in-context generator of the pipeline's family, trained from scratch with the shared trainer and
flow matching: reference frame in, standardized view out), then its accuracy on held-out
identities (``components/standardizer.py`` is the stage's command)."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd

from .. import world
from ..config import Params
from ..data.grids import grid
from ..judging.base import crop_subject
from ..models import conditioning
from ..models.standardizer import CUT_OUT, PROMPT, Routes, Standardizer, box_extent
from ..training.fit import Pairs, build_generator, run_fit
from .analyser import StandardizePairs, analyser_accuracy, heldout_pairs, load_pairs, pose_baseline, train_analyser


def training_pairs(data: StandardizePairs, ids: list[str]) -> Pairs:
    """The standardizer's flow-matching rows: the source as the one reference, the standard
    view as the target (its mask for the subject weighting), one prompt for all (``PROMPT``)."""
    return Pairs(data.targets, data.target_masks.astype(np.uint8), [PROMPT] * len(data),
                 [[s] for s in data.sources], ids)


def standardization_accuracy(outputs: list[np.ndarray], truth: StandardizePairs, encoder, crop_size: int) -> pd.DataFrame:
    """Per held-out row: pixel error (mean absolute, 0-1) of the output against the true standard
    view, and the encoder cosine of the two, both cropped at the true view's subject box; and, as
    the baseline standardizing must beat, the same for the reference itself (its subject cropped
    at its own box for the cosine)."""
    boxes = [mask_box(m) for m in truth.target_masks]
    true = encoder.embed([crop_subject(im, b, crop_size) for im, b in zip(truth.targets, boxes)])
    rows = {"category": truth.categories}
    for name, images, at in (("", outputs, boxes), ("reference_", list(truth.sources),
                                                     [mask_box(m) for m in truth.source_masks])):
        pixel = np.abs(np.stack(images).astype(np.float32) - truth.targets.astype(np.float32)).mean(axis=(1, 2, 3))
        emb = encoder.embed([crop_subject(im, b, crop_size) for im, b in zip(images, at)])
        rows.update({f"{name}pixel_error": pixel / 255, f"{name}encoder_cosine": (emb * true).sum(1)})
    return pd.DataFrame(rows)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """A non-empty mask's box (x0, y0, x1, y1), ends exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Means per category, the person apart, then every object and all rows."""
    person = rows.category == world.CHARACTER
    parts = [(c, rows[rows.category == c]) for c in sorted(rows.category.unique())]
    parts += [("objects", rows[~person]), ("all", rows)]
    cols = ["pixel_error", "encoder_cosine", "reference_pixel_error", "reference_encoder_cosine"]
    return pd.DataFrame([{"group": name, "rows": len(p), **p[cols].mean().to_dict()} for name, p in parts if len(p)])


def standardizer_routes(objects: str, data: StandardizePairs) -> Routes:
    """The routes the stage writes: ``objects`` warped or cut out at the size the training standard
    views' objects have (``box_extent``), or redrawn; redrawn when the data has no object to size
    them by."""
    is_object = np.array([c != world.CHARACTER for c in data.categories])
    if objects in CUT_OUT and not is_object.any():
        print("standardizer: WARNING no object in the data to size warped objects by; objects are redrawn", flush=True)
        return Routes("generate")
    return Routes(objects, box_extent(data.target_masks[is_object]) if objects in CUT_OUT else 0.0)


def run_standardizer(params: Params, paths) -> dict:
    """Train the analyser and the standardizer on ``paths.data`` (data/standardize) into
    ``paths.out``; score them on held-out identities with the evaluation judges' encoder."""
    from ..judging.sets import load_judge_set

    cfg, synth = params.standardizer, params.synthesize
    paths.reports.mkdir(parents=True, exist_ok=True)
    data = load_pairs(paths.data, synth.resolution, synth.supersample)
    heldout = heldout_pairs(cfg.eval_rows, synth.character_fraction, synth, cfg.seed)
    analyser, losses = train_analyser(data, cfg.analyser_steps, cfg.analyser_lr, cfg.analyser_batch_size, cfg.seed)
    analysis = {"train": analyser_accuracy(analyser, data), "heldout": analyser_accuracy(analyser, heldout),
                "heldout_constant_pose": pose_baseline(heldout), "final_loss": round(float(np.mean(losses[-20:])), 5)}
    print(f"standardizer: analyser on held-out identities {analysis['heldout']} "
          f"(constant canonical pose: {analysis['heldout_constant_pose']})", flush=True)

    model = build_generator(params.generator, synth.resolution, params.training.seed)
    conditioning.attach(model, analyser, cfg.fbdm, cfg.rpim)
    ids = [f"standardize-{i:06d}" for i in range(len(data))]
    routes = standardizer_routes(cfg.objects, data)
    # what decides the weights (not the routes, nor how the stage is scored)
    fit = run_fit("standardizer", params, paths.data, paths.out, paths.reports, paths.checkpoints,
                  model=model, data=training_pairs(data, ids),
                  extra=cfg.model_dump(exclude={"objects", "eval_rows", "grid_rows"}), write_extras=routes.save)

    standardizer = Standardizer.load(paths.out)
    outputs = standardizer(list(heldout.sources))
    routed = standardizer.route(list(heldout.sources)) == (np.array(heldout.categories) == world.CHARACTER)
    analysis["heldout_routed_right"] = round(float(routed.mean()), 4)
    encoder = load_judge_set(paths.judges / "eval", params.judges).encoder
    rows = standardization_accuracy(outputs, heldout, encoder, params.judges.crop_size)
    rows.to_csv(paths.reports / "heldout.csv", index=False)
    table = accuracy_table(rows)
    table.to_csv(paths.reports / "accuracy.csv", index=False)
    (paths.reports / "accuracy.md").write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")
    show = np.random.default_rng(cfg.seed).choice(len(heldout), size=min(cfg.grid_rows, len(heldout)), replace=False)
    grid([([heldout.sources[i], outputs[i]], heldout.targets[i], f"{heldout.categories[i]}: reference, standardized "
           "| ground truth") for i in show], max_refs=2).save(paths.reports / "heldout_grid.png")
    (paths.reports / "analyser.json").write_text(json.dumps(analysis, indent=2) + "\n")
    overall = table.set_index("group").loc["all"]
    person = table.set_index("group").loc[world.CHARACTER] if world.CHARACTER in set(table.group) else None
    return {**fit, "fbdm": cfg.fbdm, "rpim": cfg.rpim, "routes": asdict(routes), "analyser": analysis,
            "heldout": {"rows": len(heldout), "pixel_error": round(float(overall.pixel_error), 4),
                        "encoder_cosine": round(float(overall.encoder_cosine), 4),
                        "reference_encoder_cosine": round(float(overall.reference_encoder_cosine), 4),
                        **({"person_pixel_error": round(float(person.pixel_error), 4),
                            "person_encoder_cosine": round(float(person.encoder_cosine), 4)} if person is not None
                           else {})}}

