"""The generator as an MLflow model: prompt + reference images -> PNG.

``log_generator`` logs a ``save_pretrained`` generator folder as a pyfunc model from code
(MLflow's models-from-code: the model is the file ``pyfunc_model.py``, nothing is pickled; the
folder is the model's artifact, so the logged model is as self-describing as the folder); its
input is a list of ``GenerationRequest`` (prompt, references as base64 PNG, seed, and optionally
steps and guidance: by default the ones the folder records, ``sampling.json``), its output one
base64 PNG per request. ``load`` opens a generator by MLflow URI
(``models:/subjectflow-generator@candidate``, ``runs:/...``, ``models:/m-...``) or by local
folder, and ``generate`` runs it on images.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable, Sequence

import mlflow
import numpy as np
import pydantic
from PIL import Image

from .sampling import SamplingSettings

ARTIFACT = "generator"
# The pyfunc model's code (models-from-code): MLflow copies it into the logged model.
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")


class GenerationRequest(pydantic.BaseModel):
    prompt: str
    refs: list[str]  # base64-encoded PNGs, one per subject ("image 1", "image 2", ... of the prompt)
    seed: int = 0
    steps: int | None = pydantic.Field(None, ge=1)  # None: what the generator's folder records
    guidance: float | None = pydantic.Field(None, ge=1)


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def from_png_b64(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im.convert("RGB"))


def generate_images(generator, sampling: SamplingSettings, prompt: str, refs: Sequence[np.ndarray], seed: int = 0,
                    steps: int | None = None, guidance: float | None = None) -> np.ndarray:
    """One image from a loaded SubjectGenerator with its folder's ``sampling`` settings (``steps``
    and ``guidance`` override them when given); references are resized to its resolution and
    arranged in the reference layout it was trained with (``models/layout.py``)."""
    side = generator.config.resolution
    refs = [np.asarray(Image.fromarray(r).resize((side, side), Image.BICUBIC)) if r.shape[:2] != (side, side) else r
            for r in refs]
    return sampling.override(steps, guidance).sample(generator, [prompt], [list(refs)], seed=seed)[0]


def log_generator(folder: str | Path, name: str = "generator", registered_model_name: str | None = None):
    """Log the generator in ``folder`` as a pyfunc model from code (``pyfunc_model.py``) in the
    active run; returns MLflow's ModelInfo (with ``registered_model_version`` when
    ``registered_model_name`` is given)."""
    from .generator import SubjectGenerator

    generator = SubjectGenerator.from_pretrained(folder)
    side = generator.config.resolution
    blank = png_b64(np.zeros((side, side, 3), np.uint8))
    example = [GenerationRequest(prompt="the cat from image 1 in a forest", refs=[blank], steps=2).model_dump()]
    return mlflow.pyfunc.log_model(name=name, python_model=str(CODE_FILE), artifacts={ARTIFACT: str(folder)},
                                   input_example=example, registered_model_name=registered_model_name,
                                   pip_requirements=_requirements())


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "diffusers", "transformers", "mlflow", "pillow", "numpy")]


def is_local_generator(uri: str | Path) -> bool:
    return (Path(uri) / "generator_config.json").is_file()


Sampler = Callable[..., np.ndarray]  # (prompt, refs, seed=0, steps=None, guidance=None) -> HxWx3 uint8


def load(uri: str | Path) -> Sampler:
    """The generator at ``uri``, ready to sample: a local ``save_pretrained`` folder or any MLflow
    model URI (``models:/name@alias``, ``runs:/<run>/generator``, ``models:/m-...``; the
    registry's tracking store must be configured). Returns ``sample(prompt, refs, seed=0,
    steps=None, guidance=None) -> image`` (None: the settings the folder records), the model
    loaded once."""
    if is_local_generator(uri):
        from .generator import SubjectGenerator

        generator, sampling = SubjectGenerator.from_pretrained(uri).eval(), SamplingSettings.load(uri)

        def sample(prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int | None = None,
                   guidance: float | None = None) -> np.ndarray:
            return generate_images(generator, sampling, prompt, refs, seed, steps, guidance)
        return sample
    model = mlflow.pyfunc.load_model(str(uri))

    def sample(prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int | None = None,
               guidance: float | None = None) -> np.ndarray:
        req = GenerationRequest(prompt=prompt, refs=[png_b64(r) for r in refs], seed=seed, steps=steps,
                                guidance=guidance)
        return from_png_b64(model.predict([req.model_dump()])[0])
    return sample


def generate(uri: str | Path, prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int | None = None,
             guidance: float | None = None) -> np.ndarray:
    """An image from the generator at ``uri`` (see ``load``)."""
    return load(uri)(prompt, refs, seed=seed, steps=steps, guidance=guidance)
