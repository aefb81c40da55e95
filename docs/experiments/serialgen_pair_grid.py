"""Two generators' benchmark outputs side by side, the same rows: the first <per subset> rows of
each subset, references as the benchmark hands them (plain) | output, scores in the caption.

    python docs/experiments/serialgen_pair_grid.py <bench or wild dir> <entry A>:<label A> <entry B>:<label B> <out.png> [<per subset>]

An entry is a folder of the evaluate stage's cache (``.cache/evaluate/<key>`` or
``.cache/evaluate/wild/<key>``: ``images.npy`` and ``scores.parquet``, rows in benchmark order).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.data.grids import grid, load_rgb  # noqa: E402
from components.data.manifest import read_manifest  # noqa: E402


def panel(bench: Path, entry: Path, label: str, rows: list[int]) -> Image.Image:
    manifest, scores = read_manifest(bench), pd.read_parquet(entry / "scores.parquet")
    images = np.load(entry / "images.npy")
    assert list(scores.id) == list(manifest.id), f"{entry} scored other rows than {bench}"
    cells = []
    for i in rows:
        r, s = manifest.iloc[i], scores.iloc[i]
        caption = f"{r.subset}: {r.prompt} [SC {s.SC:.2f} SA {s.SA:.2f} AES {s.AES:.2f}]"
        cells.append(([load_rgb(bench / p) for p in r.refs], images[i], caption))
    body = grid(cells)
    out = Image.new("RGB", (body.width, body.height + 16), (255, 255, 255))
    out.paste(body, (0, 16))
    ImageDraw.Draw(out).text((4, 2), label, fill=(0, 0, 0))
    return out


def main(bench: str, a: str, b: str, out: str, per_subset: int = 2) -> None:
    bench_dir = Path(bench)
    manifest = read_manifest(bench_dir)
    rows = [i for _, g in manifest.groupby("subset", sort=False) for i in g.index[:per_subset]]
    panels = [panel(bench_dir, Path(e), label, rows) for e, label in (x.rsplit(":", 1) for x in (a, b))]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 16, max(p.height for p in panels)), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (panels[0].width + 16, 0))
    canvas.save(out)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:5], *(int(x) for x in sys.argv[5:6]))
