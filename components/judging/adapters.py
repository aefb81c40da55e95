"""Real pretrained models behind the judge protocols (see base.py).

``HFImageEncoder`` wraps a transformers vision backbone (DINO ViT, DINOv2 or CLIP) as a
``SubjectEncoder``; ``HFZeroShotGrounder`` wraps a text-conditioned detector (OWL-ViT, OWLv2,
Grounding DINO) as a ``Grounder``. Models load by hub id or local path; nothing here reaches
the network by itself (offline runs use local paths or a warm HF cache). Device stays CPU unless
a ``device`` is given.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..config.resolve import ENCODER_TYPES, GROUNDER_TYPES
from .base import Grounding

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# model_type (from config.json) -> adapter family; kept with the config, which checks a named
# model's type when params.yaml is loaded.
_ENCODER_FAMILIES = ENCODER_TYPES
_GROUNDER_FAMILIES = GROUNDER_TYPES


def preprocess(images: Sequence[np.ndarray], resize: int = 256, crop: int = 224,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """The DINO evaluation transform, as torchvision's Resize(resize, BICUBIC) + CenterCrop(crop) +
    Normalize: the shorter side goes to ``resize`` (aspect kept, the longer side truncated like
    torchvision), the central ``crop`` x ``crop`` square is kept, then (x/255 - mean) / std.
    Returns a float32 tensor (B, 3, crop, crop)."""
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    out = []
    for arr in images:
        img = Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("RGB")
        w, h = img.size
        if w <= h:
            size = (resize, int(resize * h / w))
        else:
            size = (int(resize * w / h), resize)
        img = img.resize(size, Image.BICUBIC)
        left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((x - mean_t) / std_t)
    return torch.stack(out)


def _model_type(spec: str) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec).model_type


def _clip_processor_settings(spec: str) -> dict:
    """mean/std/resize/crop from a saved CLIP image processor; {} when there is none."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError, KeyError):  # no preprocessor_config.json saved with the model
        return {}
    found = {}
    if getattr(proc, "image_mean", None) is not None:
        found.update(mean=tuple(proc.image_mean), std=tuple(proc.image_std))
    size, crop = getattr(proc, "size", None) or {}, getattr(proc, "crop_size", None) or {}
    if size.get("shortest_edge"):
        found["resize"] = int(size["shortest_edge"])
    if crop.get("height"):
        found["crop"] = int(crop["height"])
    return found


class HFImageEncoder:
    """A transformers vision backbone as a ``SubjectEncoder``.

    ``kind``: "auto" (from the config's model_type), "vit" (DINO), "dinov2" or "clip".
    ``resize``/``crop`` default to PSR's 256/224 for DINO-style models and to the saved image
    processor's sizes for CLIP (224/224 without one). Images are normalised with ImageNet
    statistics (DINO) or CLIP's own. ``embed`` is the CLS token (CLIP: the projected image
    embedding when the checkpoint has a projection, else the pooled output)."""

    def __init__(self, model_id_or_path: str, kind: str = "auto", resize: int | None = None,
                 crop: int | None = None, device: str | torch.device = "cpu", batch_size: int = 32):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_id_or_path)
        self.kind = _ENCODER_FAMILIES.get(config.model_type) if kind == "auto" else kind
        if self.kind not in ("vit", "dinov2", "clip"):
            raise ValueError(f"unsupported encoder model_type {config.model_type!r} (kind={kind!r})")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        default_resize, default_crop = 256, 224
        self._full_clip = self.kind == "clip" and config.model_type == "clip"
        self.model = self._load(model_id_or_path, config)
        if self.kind == "clip":
            clip = _clip_processor_settings(model_id_or_path)
            self.mean, self.std = clip.get("mean", CLIP_MEAN), clip.get("std", CLIP_STD)
            default_resize, default_crop = clip.get("resize", 224), clip.get("crop", 224)
        self.resize = resize or default_resize
        self.crop = crop or default_crop
        self.model.to(self.device).eval()
        vision = getattr(self.model.config, "vision_config", self.model.config)
        # A crop other than the trained resolution needs interpolated position embeddings
        # (DINOv2 always interpolates and takes no such flag).
        self._interpolate = self.kind != "dinov2" and self.crop != getattr(vision, "image_size", self.crop)
        # DINOv2 with registers puts register tokens between CLS and the patches.
        self._skip = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    def _load(self, spec: str, config):
        import transformers as tf

        if self.kind == "vit":
            return tf.ViTModel.from_pretrained(spec, dtype=torch.float32)
        if self.kind == "dinov2":
            return tf.AutoModel.from_pretrained(spec, dtype=torch.float32)
        if self._full_clip:
            # Not CLIPVisionModelWithProjection: from a full CLIP checkpoint it takes the vision
            # config's default projection_dim and fails on the size mismatch.
            return tf.CLIPModel.from_pretrained(spec, dtype=torch.float32)
        if "CLIPVisionModelWithProjection" in (config.architectures or []):
            return tf.CLIPVisionModelWithProjection.from_pretrained(spec, dtype=torch.float32)
        return tf.CLIPVisionModel.from_pretrained(spec, dtype=torch.float32)

    @torch.no_grad()
    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global embedding (B, D), patch tokens (B, P, D')) of a preprocessed batch."""
        kw = {"interpolate_pos_encoding": True} if self._interpolate else {}
        pixels = pixels.to(self.device)
        if self._full_clip:
            out = self.model.get_image_features(pixel_values=pixels, **kw)  # 5.x: an output object
            return out.pooler_output, out.last_hidden_state[:, 1:]
        out = self.model(pixel_values=pixels, **kw)
        if self.kind == "clip":
            pooled = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output
            return pooled, out.last_hidden_state[:, 1:]
        # DINO's feature is the final-layernormed CLS token, not ViTModel's (tanh) pooler.
        return out.last_hidden_state[:, 0], out.last_hidden_state[:, self._skip:]

    def _run(self, crops: Sequence[np.ndarray], index: int) -> np.ndarray:
        parts = []
        crops = list(crops)
        for start in range(0, len(crops), self.batch_size):
            pixels = preprocess(crops[start:start + self.batch_size], self.resize, self.crop, self.mean, self.std)
            feats = self._forward(pixels)[index].float()
            parts.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        if not parts:
            raise ValueError("no crops given")
        return np.concatenate(parts).astype(np.float32)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) float32 L2-normalised global embeddings of uint8 (H, W, 3) crops."""
        return self._run(crops, 0)

    def patch_features(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, P, D) float32 L2-normalised patch tokens in raster order (CLS and registers dropped)."""
        return self._run(crops, 1)


class HFZeroShotGrounder:
    """A transformers zero-shot detector as a ``Grounder``: each image is queried with its
    category's prompt and the highest-scoring box is kept; a top score below ``threshold``
    means not found.

    ``prompt_template`` formats the category; Grounding DINO's prompt is lowercased and ends in
    "." (its phrase separator), as in PSR, where the detector is prompted by the category name."""

    def __init__(self, model_id_or_path: str, threshold: float = 0.1,
                 prompt_template: str = "a photo of a {category}", device: str | torch.device = "cpu",
                 batch_size: int = 8):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model_type = _model_type(model_id_or_path)
        self.family = _GROUNDER_FAMILIES.get(model_type)
        if self.family is None:
            raise ValueError(f"unsupported grounder model_type {model_type!r}")
        self.threshold, self.prompt_template = threshold, prompt_template
        self.device, self.batch_size = torch.device(device), batch_size
        self.processor = AutoProcessor.from_pretrained(model_id_or_path)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model_id_or_path, dtype=torch.float32)
        self.model.to(self.device).eval()

    def _prompt(self, category: str) -> str:
        text = self.prompt_template.format(category=category).strip()
        if self.family == "gdino":
            text = text.lower().rstrip(".") + "."
        return text

    @torch.no_grad()
    def _top_boxes(self, images: list[np.ndarray], categories: list[str]) -> list[tuple[np.ndarray | None, float]]:
        pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB") for im in images]
        sizes = [(im.shape[0], im.shape[1]) for im in images]
        prompts = [self._prompt(c) for c in categories]
        if self.family == "owl":
            # A flat list = one query per image; a fixed length because OWL pads to max_length and
            # an over-long prompt must be cut, not rejected.
            max_len = self.model.config.text_config.max_position_embeddings
            inputs = self.processor(images=pil, text=prompts, return_tensors="pt", padding="max_length",
                                    truncation=True, max_length=max_len)
        else:
            # Each prompt contains ".", so the processor keeps them per image instead of merging
            # the list into one multi-phrase prompt.
            inputs = self.processor(images=pil, text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        outputs = self.model(**inputs)
        if self.family == "owl":
            # threshold 0 keeps every box; the processor knows OWLv2's pad-to-square geometry.
            results = self.processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        else:
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=sizes)
        tops = []
        for res in results:
            scores = res["scores"]
            if len(scores) == 0:
                tops.append((None, 0.0))
                continue
            best = int(torch.argmax(scores))
            tops.append((res["boxes"][best].float().cpu().numpy(), float(scores[best])))
        return tops

    def ground(self, images: Sequence[np.ndarray], categories: Sequence[str]) -> list[Grounding]:
        """One Grounding per (image, category): the top box as integer (x0, y0, x1, y1) pixels of
        the original image (exclusive ends, clipped to it), or None below the threshold."""
        images, categories = list(images), list(categories)
        if len(images) != len(categories):
            raise ValueError(f"{len(images)} images but {len(categories)} categories")
        found = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            for im, (box, score) in zip(images[chunk], self._top_boxes(images[chunk], categories[chunk])):
                pixels = None if box is None else _pixel_box(box, im.shape[1], im.shape[0])
                found.append(Grounding(pixels if score >= self.threshold else None, score, pixels))
        return found


def _pixel_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A float (x0, y0, x1, y1) box as the smallest integer box covering it inside the image,
    at least one pixel wide and tall."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    ix0 = min(max(math.floor(x0), 0), width - 1)
    iy0 = min(max(math.floor(y0), 0), height - 1)
    ix1 = max(min(math.ceil(x1), width), ix0 + 1)
    iy1 = max(min(math.ceil(y1), height), iy0 + 1)
    return ix0, iy0, ix1, iy1


def load_encoder(spec: str, **kwargs) -> HFImageEncoder:
    """The subject encoder named by ``spec`` (a hub id or a local path), e.g.
    ``JudgesParams.encoder_model``; kwargs go to ``HFImageEncoder``."""
    return HFImageEncoder(spec, **kwargs)


def load_grounder(spec: str, **kwargs) -> HFZeroShotGrounder:
    """The grounder named by ``spec`` (a hub id or a local path), e.g.
    ``JudgesParams.grounder_model``; kwargs go to ``HFZeroShotGrounder``."""
    return HFZeroShotGrounder(spec, **kwargs)
