"""A copy of a finished project's standardizer with the routes the standardizer stage writes for
``standardizer.objects: <objects>`` (cut | warp | generate), whatever the project's copy records.

    python docs/experiments/serialgen_routes.py <finished project> <out folder> <objects>
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.config import load_params  # noqa: E402
from components.standardize.analyser import load_pairs  # noqa: E402
from components.standardize.train import standardizer_routes  # noqa: E402


def main(project: str, out: str, objects: str) -> None:
    project_dir, folder = Path(project), Path(out)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(project_dir / "models/standardizer", folder)
    s = load_params(project_dir / "params.yaml").synthesize
    routes = standardizer_routes(objects, load_pairs(project_dir / "data/standardize", s.resolution, s.supersample))
    routes.save(folder)
    print(folder, routes)


if __name__ == "__main__":
    main(*sys.argv[1:4])
