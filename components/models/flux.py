"""The real profile: FLUX.1 Kontext's own weights with LoRA adapters (peft).

``from_flux(base)`` reads a FLUX.1 Kontext folder in diffusers' layout — a hub id such as
``black-forest-labs/FLUX.1-Kontext-dev`` or a local path — : ``transformer/``, ``vae/``,
``text_encoder/`` (CLIP, pooled), ``text_encoder_2/`` (T5, per token), ``tokenizer/``,
``tokenizer_2/``. Everything is frozen; LoRA adapters of rank ``lora_rank`` on the attention
projections are the only trainable weights, as in diffusers' DreamBooth-LoRA recipes. Latents
are packed 2x2 into 64-channel tokens (16 latent channels), exactly FLUX's packing, so the rest
of the generator (frame-wise ids, flow matching, samplers) is unchanged.

A trained real-profile generator folder holds ``generator_config.json`` (naming its base) and
``lora/adapter.safetensors``: the base weights are read from where they live, not copied.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from .generator import GeneratorConfig, SubjectGenerator

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
LORA_FILE = "lora/adapter.safetensors"


def from_flux(base: str | Path, resolution: int, lora_rank: int | None = 16, seed: int = 0,
              dtype: torch.dtype = torch.float32, guidance: float = 2.5) -> SubjectGenerator:
    """The generator over FLUX.1 Kontext weights at ``base``, with fresh LoRA adapters (none
    when ``lora_rank`` is None: the base model alone, e.g. to benchmark it)."""
    base = str(base)
    transformer = FluxTransformer2DModel.from_pretrained(base, subfolder="transformer", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype)
    clip = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", torch_dtype=dtype)
    t5 = T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2", torch_dtype=dtype)
    tok, tok2 = (AutoTokenizer.from_pretrained(base, subfolder=s) for s in ("tokenizer", "tokenizer_2"))
    latent = vae.config.latent_channels
    patch = int(math.isqrt(transformer.config.in_channels // latent))
    if patch * patch * latent != transformer.config.in_channels:
        raise ValueError(f"transformer in_channels {transformer.config.in_channels} is not a square packing "
                         f"of {latent} latent channels")
    config = GeneratorConfig(resolution=resolution, patch=patch, latent_channels=latent,
                             latent_factor=2 ** (len(vae.config.block_out_channels) - 1), base=base,
                             lora_rank=lora_rank, flux_guidance=guidance)
    for module in (transformer, vae, clip, t5):
        module.requires_grad_(False)
    if lora_rank:
        from peft import LoraConfig

        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                           target_modules=LORA_TARGETS))
    return SubjectGenerator(transformer, clip, tok, config, vae, text_encoder_2=t5, tokenizer_2=tok2)


def trainable_parameters(generator: SubjectGenerator) -> int:
    return sum(p.numel() for p in generator.parameters() if p.requires_grad)


def save_lora(generator: SubjectGenerator, directory: Path) -> None:
    from peft.utils import get_peft_model_state_dict

    (directory / LORA_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(generator.transformer).items()},
              directory / LORA_FILE)


def load_lora(directory: Path, config: GeneratorConfig) -> SubjectGenerator:
    from peft.utils import set_peft_model_state_dict

    generator = from_flux(config.base, config.resolution, config.lora_rank, guidance=config.flux_guidance)
    if config.lora_rank:
        result = set_peft_model_state_dict(generator.transformer, load_file(directory / LORA_FILE))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{directory / LORA_FILE}: keys the model does not have: {result.unexpected_keys[:5]}")
    return generator


def save_merged_lora(generator: SubjectGenerator, directory: Path, adapters: list[str]) -> None:
    """Save several active adapters as one: W + sum_i B_i A_i = W + [B_1 ... B_n][A_1; ...; A_n], an
    adapter of the summed rank (every adapter here has alpha = rank, a scale of 1, and so has the
    merged one). The RL stage's SFT and RL adapters become the one adapter ``load_lora`` reads."""
    import json
    from dataclasses import asdict, replace

    from peft.utils import get_peft_model_state_dict

    from .generator import CONFIG_NAME

    parts = [get_peft_model_state_dict(generator.transformer, adapter_name=a) for a in adapters]
    for a in adapters:
        cfg = generator.transformer.peft_config[a]
        if cfg.lora_alpha != cfg.r:
            raise ValueError(f"adapter {a!r} has alpha {cfg.lora_alpha} != rank {cfg.r}: merging assumes a scale of 1")
    merged = {k: torch.cat([p[k] for p in parts], 0 if ".lora_A." in k else 1).contiguous() for k in parts[0]}
    rank = sum(generator.transformer.peft_config[a].r for a in adapters)
    (directory / LORA_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file(merged, directory / LORA_FILE)
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(replace(generator.config, lora_rank=rank)), indent=2))
