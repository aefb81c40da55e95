"""The generator as an MLflow model: prompt + reference images -> PNG.

``log_generator`` logs a ``save_pretrained`` generator folder as a pyfunc model (the folder is
the model's artifact, so the logged model is as self-describing as the folder); its input is a
list of ``GenerationRequest`` (prompt, references as base64 PNG, seed, steps, guidance), its
output one base64 PNG per request. ``load`` opens a generator by MLflow URI
(``models:/subjectflow-generator@candidate``, ``runs:/...``, ``models:/m-...``) or by local
folder, and ``generate`` runs it on image files.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import pydantic
from PIL import Image

from .layout import arrange, load_layout

ARTIFACT = "generator"


class GenerationRequest(pydantic.BaseModel):
    prompt: str
    refs: list[str]  # base64-encoded PNGs, one per subject ("image 1", "image 2", ... of the prompt)
    seed: int = 0
    steps: int = 20
    guidance: float = 1.0


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def from_png_b64(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im.convert("RGB"))


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a SubjectGenerator folder."""

    def load_context(self, context):
        from .generator import SubjectGenerator

        self.generator = SubjectGenerator.from_pretrained(context.artifacts[ARTIFACT]).eval()
        self.layout = load_layout(context.artifacts[ARTIFACT])

    def predict(self, model_input: list[GenerationRequest], params=None) -> list[str]:
        return [png_b64(generate_images(self.generator, r.prompt, [from_png_b64(x) for x in r.refs], r.seed,
                                        r.steps, r.guidance, self.layout)) for r in model_input]


def generate_images(generator, prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int = 20,
                    guidance: float = 1.0, layout: str = "as_given") -> np.ndarray:
    """One image from a loaded SubjectGenerator; references are resized to its resolution and
    arranged in the reference layout it was trained with (``models/layout.py``)."""
    side = generator.config.resolution
    refs = [np.asarray(Image.fromarray(r).resize((side, side), Image.BICUBIC)) if r.shape[:2] != (side, side) else r
            for r in refs]
    refs = arrange(refs, layout)
    return generator.sample([prompt], [list(refs)], steps=steps, guidance=guidance, seed=seed)["images"][0]


def log_generator(folder: str | Path, name: str = "generator", registered_model_name: str | None = None):
    """Log the generator in ``folder`` as a pyfunc model in the active run; returns MLflow's
    ModelInfo (with ``registered_model_version`` when ``registered_model_name`` is given)."""
    from .generator import SubjectGenerator

    generator = SubjectGenerator.from_pretrained(folder)
    side = generator.config.resolution
    blank = png_b64(np.zeros((side, side, 3), np.uint8))
    example = [GenerationRequest(prompt="the cat from image 1 in a forest", refs=[blank], steps=2).model_dump()]
    return mlflow.pyfunc.log_model(name=name, python_model=GeneratorModel(), artifacts={ARTIFACT: str(folder)},
                                   input_example=example, registered_model_name=registered_model_name,
                                   pip_requirements=_requirements())


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "diffusers", "transformers", "mlflow", "pillow", "numpy")]


def is_local_generator(uri: str | Path) -> bool:
    return (Path(uri) / "generator_config.json").is_file()


def generate(uri: str, prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int = 20,
             guidance: float = 1.0) -> np.ndarray:
    """An image from the generator at ``uri``: a local ``save_pretrained`` folder or any MLflow
    model URI (the registry's tracking store must be configured)."""
    if is_local_generator(uri):
        from .generator import SubjectGenerator

        return generate_images(SubjectGenerator.from_pretrained(uri).eval(), prompt, refs, seed, steps, guidance,
                               load_layout(uri))
    model = mlflow.pyfunc.load_model(uri)
    req = GenerationRequest(prompt=prompt, refs=[png_b64(r) for r in refs], seed=seed, steps=steps, guidance=guidance)
    return from_png_b64(model.predict([req.model_dump()])[0])
