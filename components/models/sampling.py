"""How a trained generator samples: steps, CFG scale and reference layout, recorded in its folder.

The training stage writes ``sampling.json`` with the settings the pipeline then benchmarks it
with (``generator.sample_steps``, ``generator.guidance``, ``generator.sample_precision`` and the
reference layout of its data),
so the benchmark, the bootstrapping stage, the registered pyfunc model and
``subjectflow generate`` all draw what the README's numbers measured, unless a caller overrides
a setting. A folder without the file (saved by hand) samples plainly: 20 steps, no guidance,
references as given, in fp32.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from .layout import arrange, check_layout

FILE = "sampling.json"
PRECISIONS = ("fp32", "bf16")  # of the transformer when sampling: fp32, or under bf16 autocast


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 20
    guidance: float = 1.0
    reference_layout: str = "as_given"
    precision: str = "fp32"  # fp32 | bf16: the transformer under bf16 autocast (models/generator.py)

    def __post_init__(self):
        check_layout(self.reference_layout, f"{FILE}: ")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{FILE}: precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.steps < 1 or self.guidance < 1:
            raise ValueError(f"sampling: steps must be >= 1 and guidance >= 1, got {self.steps} and {self.guidance}")

    def save(self, folder: str | Path) -> None:
        (Path(folder) / FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> SamplingSettings:
        """What ``folder`` records (the plain defaults when it records nothing)."""
        path = Path(folder) / FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def override(self, steps: int | None = None, guidance: float | None = None,
                 precision: str | None = None) -> SamplingSettings:
        """These settings with a caller's explicit choices (None keeps the recorded one)."""
        return replace(self, steps=self.steps if steps is None else steps,
                       guidance=self.guidance if guidance is None else guidance,
                       precision=self.precision if precision is None else precision)

    def sample(self, model, prompts, refs, seed: int) -> list:
        """``model``'s images for ``prompts`` and plain references (prepared here: standardized by
        the model's standardizer if it carries one, then packed by the layout)."""
        packed = prepare_references(refs, self.reference_layout, getattr(model, "standardizer", None))
        return list(model.sample(list(prompts), packed, steps=self.steps, guidance=self.guidance, seed=seed,
                                 precision=self.precision)["images"])


def prepare_references(refs, layout: str | Sequence[str], standardizer=None) -> list[list]:
    """Rows of references as a generator reads them: each standardized by ``standardizer``
    (SerialGen's stage II, ``models/standardizer.py``; None: as given), then arranged in
    ``layout`` (one for every row, or one per row). The benchmark, the pyfunc model, ``generate``
    and SFT's training data all go through here."""
    if standardizer is not None:
        refs = standardizer.references(refs)
    layouts = [layout] * len(refs) if isinstance(layout, str) else list(layout)
    return [arrange(r, lay) for r, lay in zip(refs, layouts, strict=True)]
