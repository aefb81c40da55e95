"""Objects warped by the analyser's reading against objects redrawn by the standardizer, on the
stage's held-out pairs (eval encoder cosine and pixel error against the true standard view).

    python docs/experiments/serialgen_warp.py <finished project> [<standardizer folder> [<grid.png>]]

Reads the project's models/standardizer, or the folder given (any `objects` route: both are
applied here to the same model), data/standardize (the standard views' object size) and models/judges/eval. Rows: the
standardizer redrawing every reference; objects warped by the analyser's mask and rotation (the
person redrawn); objects cut out by its mask, not turned (`objects: cut`); the same warp with the renderer's true mask and rotation (the route's ceiling);
the untouched reference. Prints the table and how often the analyser routes a row right; the
grid (reference, redrawn, warped | truth; 12 rows, half of them the person) goes to <grid.png>.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components import world  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data.grids import grid  # noqa: E402
from components.judging.sets import load_judge_set  # noqa: E402
from components.models.generator import to_model, to_uint8  # noqa: E402
from components.models.standardizer import (Routes, Standardizer, box_extent, plain_background,  # noqa: E402
                                            warp_to_standard)
from components.standardize.analyser import heldout_pairs, load_pairs  # noqa: E402
from components.standardize.train import accuracy_table, standardization_accuracy  # noqa: E402


def main(project: Path, folder: Path, grid_path: Path | None = None) -> None:
    params = load_params(project / "params.yaml")
    synth, cfg = params.synthesize, params.standardizer
    data = load_pairs(project / "data/standardize", synth.resolution, synth.supersample)
    objects = np.array([c != world.CHARACTER for c in data.categories])
    extent = box_extent(data.target_masks[objects])
    heldout = heldout_pairs(cfg.eval_rows, synth.character_fraction, synth, cfg.seed)
    person = np.array([c == world.CHARACTER for c in heldout.categories])
    encoder = load_judge_set(project / "models/judges/eval", params.judges).encoder
    base = Standardizer.load(folder)
    sources = list(heldout.sources)

    generated = Standardizer(base.model, base.sampling, Routes("generate"))(sources)
    warped_std = Standardizer(base.model, base.sampling, Routes("warp", extent))
    warped = warped_std(sources)
    cut = Standardizer(base.model, base.sampling, Routes("cut", extent))(sources)
    routed = warped_std.route(sources)
    rotation = torch.rad2deg(torch.atan2(torch.tensor(heldout.poses[:, 8]), torch.tensor(heldout.poses[:, 9])))
    truth = to_uint8(warp_to_standard(to_model(sources), torch.tensor(heldout.source_masks).float(), rotation, extent,
                                      plain_background())[0])
    ceiling = [g if p else t for g, t, p in zip(generated, truth, person)]  # the person redrawn as in the row above

    print(f"object extent {extent:.3f}; routed right: {np.mean(routed == person):.3f} "
          f"(person {np.mean(routed[person]):.3f}, objects {np.mean(~routed[~person]):.3f})\n")
    print("| standardizer | person | objects | all | pixel error, objects |\n|---|---|---|---|---|")
    for name, out in (("redrawn (objects: generate)", generated), ("warped by the analyser (objects: warp)", warped),
                      ("cut out, not turned (objects: cut)", cut), ("warped by the true mask and rotation", ceiling)):
        t = accuracy_table(standardization_accuracy(out, heldout, encoder, params.judges.crop_size)).set_index("group")
        print(f"| {name} | {t.encoder_cosine['person']:.3f} | {t.encoder_cosine['objects']:.3f} | "
              f"{t.encoder_cosine['all']:.3f} | {t.pixel_error['objects']:.3f} |")
    print(f"| the reference itself | {t.reference_encoder_cosine['person']:.3f} | "
          f"{t.reference_encoder_cosine['objects']:.3f} | {t.reference_encoder_cosine['all']:.3f} | "
          f"{t.reference_pixel_error['objects']:.3f} |")
    if grid_path is not None:
        rng = np.random.default_rng(0)
        show = list(rng.choice(np.flatnonzero(person), 4, replace=False)) + \
            list(rng.choice(np.flatnonzero(~person), 8, replace=False))
        grid([([heldout.sources[i], generated[i], warped[i]], heldout.targets[i],
               f"{heldout.categories[i]}: reference, redrawn, warped | truth") for i in show],
             max_refs=3).save(grid_path)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(sys.argv[1]) / "models/standardizer",
         Path(sys.argv[3]) if len(sys.argv) > 3 else None)
