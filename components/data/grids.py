"""Sample grids: one row per sample — its references, a gap, then the image — with the prompt
written underneath, so a reviewer can judge identity at a glance."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def grid(rows: list[tuple[list[np.ndarray], np.ndarray, str]], cell: int = 96, max_refs: int = 4) -> Image.Image:
    """rows: (reference images, output image, caption). Images are uint8 (H, W, 3); each is
    scaled to ``cell`` pixels with nearest-neighbour so pixels stay visible."""
    pad, text_h = 4, 28
    width = pad + (max_refs + 1) * (cell + pad) + cell // 3
    height = pad + len(rows) * (cell + text_h + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (refs, out, caption) in enumerate(rows):
        y = pad + r * (cell + text_h + pad)
        for k, ref in enumerate(refs[:max_refs]):
            canvas.paste(Image.fromarray(ref).resize((cell, cell), Image.NEAREST), (pad + k * (cell + pad), y))
        x_out = pad + max_refs * (cell + pad) + cell // 3
        canvas.paste(Image.fromarray(out).resize((cell, cell), Image.NEAREST), (x_out, y))
        draw.line([(x_out - cell // 6, y), (x_out - cell // 6, y + cell)], fill=(160, 160, 160), width=2)
        wrapped = textwrap.wrap(caption, width=max(20, width // 6))[:2]
        draw.multiline_text((pad, y + cell + 2), "\n".join(wrapped), fill=(0, 0, 0), spacing=1)
    return canvas


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def dataset_grid(dataset_dir: str | Path, manifest, n: int) -> Image.Image:
    """The grid of the first ``n`` samples of a dataset (references | target, prompt)."""
    d = Path(dataset_dir)
    rows = [([load_rgb(d / p) for p in rec.refs], load_rgb(d / rec.target), rec.prompt)
            for rec in manifest.head(n).itertuples(index=False)]
    return grid(rows)
