"""SerialGen's stage II: a generator trained on standardized references carries the frozen
standardizer (``components/standardize``) in its folder (``standardizer/``), and every caller
that samples it (the benchmark, the registered pyfunc model, ``subjectflow generate``, the RL
stage) hands it the user's plain references: ``SamplingSettings.sample`` standardizes them with
it, then arranges them in the generator's layout (``sampling.prepare_references``), the same
function SFT applied to its training references.

Standardizing is deterministic per image: the ODE starts from noise seeded by the image's bytes,
so one reference maps to one standardized view whichever batch it comes in, and repeated
references are computed once (cached).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..world import backgrounds

FOLDER = "standardizer"
# One prompt for every reference: a user's reference comes with no category or pose, so the
# standardizer reads both from the image (the analyser does, for its conditioning).
PROMPT = f"image 1 standardized: large, front view, centred, {backgrounds.PHRASES['plain']}"


class Standardizer:
    """``standardizer(images) -> images``: each reference (uint8 (S, S, 3)) to its standardized view."""

    def __init__(self, model, sampling, batch: int = 128):
        self.model, self.sampling, self.batch = model.eval(), sampling, batch
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, folder: str | Path) -> Standardizer:
        from .generator import SubjectGenerator
        from .sampling import SamplingSettings

        model = SubjectGenerator.from_pretrained(folder)
        if model.ref_conditioner is None:
            raise ValueError(f"{folder}: not a standardizer (no reference conditioning)")
        return cls(model, SamplingSettings.load(folder))

    @classmethod
    def load_from(cls, generator_folder: str | Path) -> Standardizer | None:
        """The standardizer a generator folder carries, or None."""
        sub = Path(generator_folder) / FOLDER
        return cls.load(sub) if sub.is_dir() else None

    def save(self, generator_folder: str | Path) -> None:
        """Into ``generator_folder/standardizer``, as ``load_from`` reads it."""
        out = Path(generator_folder) / FOLDER
        self.model.save_pretrained(out)
        self.sampling.save(out)

    @staticmethod
    def key(image: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()

    def noise(self, keys: Sequence[str]) -> torch.Tensor:
        """Each image's starting noise, seeded by its bytes."""
        n, c = self.model.config.grid ** 2, self.model.config.channels
        return torch.stack([torch.randn(n, c, generator=torch.Generator().manual_seed(int(k[:15], 16)))
                            for k in keys])

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        keys = [self.key(im) for im in images]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        first = {k: im for k, im in zip(keys, images)}
        s = self.sampling
        for i in range(0, len(todo), self.batch):
            part = todo[i:i + self.batch]
            out = self.model.sample([PROMPT] * len(part), [[first[k]] for k in part], steps=s.steps,
                                    guidance=s.guidance, precision=s.precision, noise=self.noise(part))["images"]
            self._cache.update(zip(part, out))
        return [self._cache[k] for k in keys]

    def references(self, refs: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        """Every row's references standardized (rows of any lengths)."""
        flat = self([im for r in refs for im in r])
        out, i = [], 0
        for r in refs:
            out.append(flat[i:i + len(r)])
            i += len(r)
        return out
