"""The generator as an MLflow model: prompt + reference images -> PNG.

``log_generator`` logs a ``save_pretrained`` generator folder as a pyfunc model from code
(MLflow's models-from-code: the model is the file ``pyfunc_model.py``, nothing is pickled; the
folder is the model's artifact, so the logged model is as self-describing as the folder); its
input is a list of ``GenerationRequest`` (prompt, references as base64 PNG, seed, and optionally
steps and guidance: by default the ones the folder records, ``sampling.json``), its output one
base64 PNG per request. ``load`` opens a generator by MLflow URI
(``models:/subjectflow-generator@candidate``, ``runs:/...``, ``models:/m-...``) or by local
folder, and ``generate`` runs it on images. Every way in (this module's functions, the pyfunc
model's ``predict``, ``subjectflow generate``) checks a request with ``check_request`` and answers a
caller's mistake with a ``RequestError`` that says what to fix.
"""
from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path
from typing import Callable, Sequence

import mlflow
import numpy as np
import pydantic
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
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


class RequestError(MlflowException, ValueError):
    """A generation request the generator cannot honour: the caller's mistake, not a bug. An
    MlflowException of kind INVALID_PARAMETER_VALUE, so a served model answers 400 with this message."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


_IMAGE_K = re.compile(r"\bimage\s+(\d+)\b", re.IGNORECASE)
SEED_MAX = 2 ** 64 - 1  # torch.Generator.manual_seed takes no more


def named_images(prompt: str) -> list[int]:
    """The reference numbers a prompt names, in order: "the cat from image 2 left of image 1" -> [2, 1]."""
    return [int(k) for k in _IMAGE_K.findall(prompt)]


def check_request(prompt: str, n_refs: int, steps: int | None = None, guidance: float | None = None,
                  max_refs: int | None = None, seed: int = 0) -> None:
    """Raise RequestError unless the request is one the generator was made for: a prompt naming
    its references as the world's prompts do (reference k is "image k": every one of 1..n named,
    none beyond), 1 to ``max_refs`` references (None: not known yet), steps >= 1, a finite
    guidance >= 1 and a seed torch takes. None for steps or guidance: the generator's own setting."""
    if not prompt.strip():
        raise RequestError('the prompt is empty: describe the image, naming reference k as "image k"')
    if n_refs < 1:
        raise RequestError('no reference image: give one per subject, in order (reference k is "image k" of the '
                           'prompt)')
    if max_refs is not None and n_refs > max_refs:
        raise RequestError(f"{n_refs} reference images, but this generator takes at most {max_refs}")
    named = named_images(prompt)
    beyond = [k for k in named if not 1 <= k <= n_refs]
    if beyond:
        given = "is 1 reference image" if n_refs == 1 else f"are {n_refs} reference images"
        raise RequestError(f'the prompt names "image {beyond[0]}" but there {given}: reference k is "image k", '
                           f"k = 1..{n_refs}")
    unnamed = [k for k in range(1, n_refs + 1) if k not in named]
    if unnamed:
        k = unnamed[0]
        raise RequestError(f'reference {k} is never named in the prompt: say "image {k}" where its subject goes '
                           f'("the cat from image {k}"), or leave the reference out')
    if steps is not None and steps < 1:
        raise RequestError(f"steps must be at least 1, got {steps}")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 1):
        raise RequestError(f"guidance must be a number >= 1 (1 = no guidance), got {guidance}")
    if not 0 <= seed <= SEED_MAX:
        raise RequestError(f"seed must be between 0 and {SEED_MAX}, got {seed}")


_UNDECODABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises on bad bytes


def read_image(source: str | Path | bytes, what: str) -> np.ndarray:
    """An RGB uint8 image from a file or from encoded bytes (PNG, JPEG...); RequestError naming
    ``what`` (``--ref a.png``, ``reference 2``) when there is no such file or it does not decode."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise RequestError(f"{what}: no such file") from None
    except _UNDECODABLE as e:
        raise RequestError(f"{what}: not an image Pillow can decode ({e})") from None


def decode_refs(refs: Sequence[str]) -> list[np.ndarray]:
    """A request's base64-encoded references as images (RequestError naming the one that does not decode)."""
    out = []
    for k, data in enumerate(refs, 1):
        try:
            raw = base64.b64decode(data)
        except ValueError:  # binascii.Error: bad padding
            raise RequestError(f'reference {k} ("image {k}"): not base64') from None
        out.append(read_image(raw, f'reference {k} ("image {k}")'))
    return out


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
    arranged in the reference layout it was trained with (``models/layout.py``). RequestError
    when the request is not one it can draw (``check_request``)."""
    check_request(prompt, len(refs), steps, guidance, generator.config.max_refs, seed)
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


def max_refs(uri: str | Path) -> int | None:
    """How many references the generator folder at ``uri`` takes; None for an MLflow URI (its
    model checks once loaded)."""
    if not is_local_generator(uri):
        return None
    from .generator import CONFIG_NAME, GeneratorConfig

    return GeneratorConfig(**json.loads((Path(uri) / CONFIG_NAME).read_text())).max_refs


def _check_model_path(uri: str | Path) -> None:
    """RequestError for a local path that holds no generator: MLflow would call it a missing artifact."""
    from urllib.parse import urlsplit

    if urlsplit(str(uri)).scheme:  # models:/, runs:/, file:, s3:...: MLflow resolves it
        return
    if not Path(uri).exists():
        raise RequestError(f"{uri}: no such generator folder, and not an MLflow model URI "
                           "(models:/NAME@ALIAS, runs:/RUN_ID/generator)")
    if not (Path(uri) / "MLmodel").is_file():
        raise RequestError(f"{uri}: neither a generator folder (no generator_config.json) nor an MLflow model "
                           "(no MLmodel)")


Sampler = Callable[..., np.ndarray]  # (prompt, refs, seed=0, steps=None, guidance=None) -> HxWx3 uint8


def load(uri: str | Path) -> Sampler:
    """The generator at ``uri``, ready to sample: a local ``save_pretrained`` folder or any MLflow
    model URI (``models:/name@alias``, ``runs:/<run>/generator``, ``models:/m-...``; the
    registry's tracking store must be configured). Returns ``sample(prompt, refs, seed=0,
    steps=None, guidance=None) -> image`` (None: the settings the folder records), the model
    loaded once. RequestError for a request it cannot draw, or a local path holding no generator."""
    if is_local_generator(uri):
        from .generator import SubjectGenerator

        generator, sampling = SubjectGenerator.from_pretrained(uri).eval(), SamplingSettings.load(uri)

        def sample(prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int | None = None,
                   guidance: float | None = None) -> np.ndarray:
            return generate_images(generator, sampling, prompt, refs, seed, steps, guidance)
        return sample
    _check_model_path(uri)
    model = mlflow.pyfunc.load_model(str(uri))

    def sample(prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int | None = None,
               guidance: float | None = None) -> np.ndarray:
        check_request(prompt, len(refs), steps, guidance, seed=seed)  # before GenerationRequest's own checks
        req = GenerationRequest(prompt=prompt, refs=[png_b64(r) for r in refs], seed=seed, steps=steps,
                                guidance=guidance)
        return from_png_b64(model.predict([req.model_dump()])[0])
    return sample


def generate(uri: str | Path, prompt: str, refs: Sequence[np.ndarray], seed: int = 0, steps: int | None = None,
             guidance: float | None = None) -> np.ndarray:
    """An image from the generator at ``uri`` (see ``load``)."""
    return load(uri)(prompt, refs, seed=seed, steps=steps, guidance=guidance)
