"""Generators the benchmark can score: anything with ``generate(prompt, refs, ...) -> image``.

Reference points ship here: ``oracle`` (the renderer with the ground-truth scene: the ceiling),
``copy_paste`` (the references pasted onto the named background: high subject consistency,
caught by the semantic and aesthetic dimensions), ``background_only`` and ``noise`` (floors).
Trained generators join through ``register``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from .. import world
from ..config.data import REFERENCE_GENERATORS
from ..registry import Registry
from ..world import backgrounds


class Generator(Protocol):
    name: str

    def generate(self, prompt: str, refs: Sequence[np.ndarray], *, height: int, width: int, seed: int,
                 meta: dict | None = None) -> np.ndarray:
        """An (height, width, 3) uint8 image for the prompt, one reference image per subject.
        ``meta`` carries the benchmark row; only the oracle may read its ground truth."""


GENERATORS: Registry[Callable[..., Generator]] = Registry("generator")
register = GENERATORS.register


def make_generator(name: str, models: str | Path | None = None, **kwargs) -> Generator:
    """A reference generator by name, or a trained one: ``name`` a folder under ``models``
    (``pretrain`` -> models/pretrain) or a path to a ``save_pretrained`` generator folder."""
    if name in GENERATORS:
        return GENERATORS.get(name)(**kwargs)
    folder = trained_folder(name, models)
    if folder is not None:
        return TrainedGenerator(folder, name=name, **kwargs)
    raise KeyError(f"unknown generator {name!r}; known: {GENERATORS.names()} or a trained generator folder"
                   + (f" under {models}" if models else ""))


def trained_folder(name: str, models: str | Path | None = None) -> Path | None:
    """The generator folder ``name`` stands for (``models/<name>``, else ``name`` as a path), if any."""
    for folder in ([Path(models) / name] if models else []) + [Path(name)]:
        if (folder / "generator_config.json").is_file():
            return folder
    return None


def available() -> list[str]:
    """The reference generators' names (= config.data.REFERENCE_GENERATORS, checked at import)."""
    return GENERATORS.names()


def background_in(prompt: str) -> str:
    """The background a prompt names (the phrase that ends it), 'plain' if none."""
    for name, phrase in backgrounds.PHRASES.items():
        if prompt.endswith(phrase):
            return name
    return backgrounds.PLAIN


@register("oracle")
class Oracle:
    """The renderer with the benchmark row's ground-truth scene."""

    name = "oracle"

    def generate(self, prompt, refs, *, height, width, seed, meta=None):
        if not meta or "scene" not in meta:
            raise ValueError("the oracle needs the benchmark row's scene in meta")
        return world.render(world.Scene.from_dict(json.loads(meta["scene"])), height, width).image


@register("copy_paste")
class CopyPaste:
    """What a model that copies its inputs draws: each reference's subject region, pixels
    unchanged, pasted side by side onto the named background. It reads the reference boxes
    (``meta["ref_boxes"]``, what a perfect segmenter of the *references* would give; never the
    target scene); without them it pastes each reference's centre. The subjects are faithful, so
    consistency is high; the pasted rectangles keep their own backgrounds (seams, pasted patches)
    and ignore the prompt's sizes, actions and relations, which the other two dimensions catch."""

    name = "copy_paste"

    def __init__(self, pad: int = 1, centre: float = 0.6):
        self.pad, self.centre = pad, centre

    def _region(self, ref: np.ndarray, box) -> np.ndarray:
        h, w = ref.shape[:2]
        if box is None:
            side = max(int(min(h, w) * self.centre), 1)
            box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        x0, y0, x1, y1 = (int(v) for v in box)
        return ref[max(y0 - self.pad, 0):min(y1 + self.pad, h), max(x0 - self.pad, 0):min(x1 + self.pad, w)]

    def generate(self, prompt, refs, *, height, width, seed, meta=None):
        canvas = (backgrounds.draw(background_in(prompt), seed, height, width) * 255).round().astype(np.uint8)
        boxes = (meta or {}).get("ref_boxes") or [None] * len(refs)
        regions = [self._region(np.asarray(ref), box) for ref, box in zip(refs, boxes)]
        if not regions:
            return canvas
        # Original pixel size where they fit side by side; shrunk together where they do not.
        scale = min(1.0, width / sum(r.shape[1] for r in regions), height / max(r.shape[0] for r in regions))
        sizes = [(max(int(r.shape[1] * scale), 1), max(int(r.shape[0] * scale), 1)) for r in regions]
        gap = (width - sum(w for w, _ in sizes)) // (len(regions) + 1)
        left = gap
        for region, (w, h) in zip(regions, sizes):
            patch = region if (w, h) == (region.shape[1], region.shape[0]) else \
                np.asarray(Image.fromarray(region).resize((w, h), Image.NEAREST))
            top = (height - h) // 2
            canvas[top:top + h, left:left + w] = patch
            left += w + gap
        return canvas


@register("background_only")
class BackgroundOnly:
    """The named background and nothing on it."""

    name = "background_only"

    def generate(self, prompt, refs, *, height, width, seed, meta=None):
        return (backgrounds.draw(background_in(prompt), seed, height, width) * 255).round().astype(np.uint8)


@register("noise")
class Noise:
    """Uniform noise."""

    name = "noise"

    def generate(self, prompt, refs, *, height, width, seed, meta=None):
        return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# params.yaml is checked against the names config keeps (the config imports nothing of the
# benchmark): the two lists must be one.
if tuple(GENERATORS.names()) != tuple(sorted(REFERENCE_GENERATORS)):
    raise ImportError(f"components/config/data.py REFERENCE_GENERATORS {sorted(REFERENCE_GENERATORS)} must name the "
                      f"reference generators registered here, {GENERATORS.names()}")


class TrainedGenerator:
    """A trained generator folder (``SubjectGenerator.save_pretrained``) behind the benchmark's
    interface; ``generate_batch`` samples many rows with the same reference count at once, with
    the sampling settings the folder records (``sampling.json``) unless ``steps``, ``guidance`` or
    ``precision`` override them."""

    def __init__(self, folder: str | Path, name: str | None = None, steps: int | None = None,
                 guidance: float | None = None, precision: str | None = None, batch: int = 64):
        from ..models.generator import SubjectGenerator
        from ..models.sampling import SamplingSettings

        self.name = name or Path(folder).name
        self.model = SubjectGenerator.from_pretrained(folder).eval()
        self.sampling = SamplingSettings.load(folder).override(steps, guidance, precision)
        self.batch = batch

    def _check_size(self, height: int, width: int) -> None:
        res = self.model.config.resolution
        if (height, width) != (res, res):
            raise ValueError(f"{self.name} draws {res}x{res} images, the benchmark asks for {height}x{width}")

    def generate(self, prompt, refs, *, height, width, seed, meta=None):
        return self.generate_batch([prompt], [refs], height=height, width=width, seed=seed)[0]

    def generate_batch(self, prompts, refs, *, height, width, seed):
        self._check_size(height, width)
        out = []
        for i in range(0, len(prompts), self.batch):
            out += self.sampling.sample(self.model, prompts[i:i + self.batch], refs[i:i + self.batch], seed=seed + i)
        return out
