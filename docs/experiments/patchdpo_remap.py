"""Re-score a finished ``data/patchdpo`` with the current estimator, without redrawing its images.

The drawing is most of the patchdpo_data stage's time (about 20 of its 21 minutes on the default
project); when only the quality maps change (as when a missed subject's reference map went from
unscored to quality 0), this writes a new pairs folder whose images are links to the old ones and
whose ``maps.npz``, manifest and calibration come from the current code.

    python docs/experiments/patchdpo_remap.py <old data/patchdpo> <data/multisubject> <models/judges> <new folder>
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from components.config import load_params
from components.data.grids import load_rgb
from components.data.manifest import MANIFEST, read_manifest
from components.data.rows import load_rows
from components.judging.sets import load_judge_set
from components.preference.data import CALIBRATION, MAPS, stack_maps
from components.preference.quality import quality_maps


def main(old: Path, data: Path, judges_dir: Path, new: Path, params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    manifest = read_manifest(old)
    rows = load_rows(data)
    where = {rid: i for i, rid in enumerate(rows.ids)}
    meta = [rows.meta[where[r]] for r in manifest.row]
    images = [load_rgb(old / p) for p in manifest.image]
    judges = load_judge_set(judges_dir / params.patchdpo.judge_set, params.judges)
    maps = []
    for start in range(0, len(images), 256):
        maps += quality_maps(judges, images[start:start + 256], meta[start:start + 256], params.judges.crop_size)
    new.mkdir(parents=True)
    (new / "images").symlink_to((old / "images").resolve())
    np.savez_compressed(new / MAPS, **stack_maps(maps))
    shutil.copy2(old / CALIBRATION, new / CALIBRATION)
    manifest = manifest.assign(found=[int(qm.found.sum()) for qm in maps], quality=[round(qm.score, 5) for qm in maps])
    manifest.to_parquet(new / MANIFEST, index=False)
    print(f"{len(maps)} samples re-scored into {new}")


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:5]), *map(Path, sys.argv[5:6]))
