"""The generator: FLUX.1 Kontext-style in-context personalization.

One ``FluxTransformer2DModel`` reads a single token sequence: the noisy target's patch tokens
followed by each reference image's clean patch tokens. Position ids are frame-wise, as PSR
packs references: the target's tokens carry (0, h, w) and reference i's carry (i, h, w), so RoPE
tells the frames apart while every frame shares one spatial grid. Only the target's tokens are
read out, as a velocity.

The model predicts the velocity ``v = eps - x0`` of rectified flow (``x_t = (1 - t) x0 + t eps``,
FLUX's); how it is trained is an objective's business (``components/objectives``). Sampling
integrates the ODE from t = 1 to 0 (Euler), or runs Flow-GRPO's SDE, whose every step is
Gaussian and returns its log-probability.

Images are uint8 (H, W, 3) at the API, (B, 3, H, W) in [-1, 1] inside, and patch tokens of
``3 * patch**2`` channels in the transformer (no VAE: the default world is 32 px).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel

from . import conditioning
from .attention import Fp32CpuAttention
from .conditioning import condition
from .sampling import PRECISIONS
from .text import build_tokenizer, tiny_text_encoder, tokenize

CONFIG_NAME = "generator_config.json"


@dataclass
class GeneratorConfig:
    resolution: int = 32
    patch: int = 4
    max_refs: int = 4
    # 0: the transformer reads pixels. Otherwise it reads the latents of an autoencoder (FLUX's
    # VAE role: ``vae/`` in the folder) with this many channels, ``latent_factor`` times smaller.
    latent_channels: int = 0
    latent_factor: int = 1
    # Real profile (models/flux.py): the FLUX.1 Kontext folder or hub id the weights come from,
    # the LoRA rank trained on its transformer, and its distilled guidance value.
    base: str | None = None
    lora_rank: int | None = None
    flux_guidance: float = 2.5
    # What the transformer outputs: "velocity" (v = eps - x0, FLUX's) or "sample" (x0, JiT's
    # x-prediction, Li & He 2025): at pixel level a small network predicts the clean image far
    # better than the noise; either way ``velocity()`` returns a velocity and the loss is on it.
    prediction: str = "velocity"
    min_t: float = 0.05  # x-prediction divides by t: clamp it

    @property
    def space_channels(self) -> int:
        """Channels of the space the transformer works in: RGB or the autoencoder's latents."""
        return self.latent_channels or 3

    @property
    def space_size(self) -> int:
        return self.resolution // (self.latent_factor if self.latent_channels else 1)

    @property
    def grid(self) -> int:
        return self.space_size // self.patch

    @property
    def channels(self) -> int:
        return self.space_channels * self.patch ** 2


def frame_ids(frames: int, grid: int) -> torch.Tensor:
    """(frames * grid * grid, 3) position ids: frame f's tokens are (f, h, w) in raster order."""
    f, h, w = torch.meshgrid(torch.arange(frames), torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([f, h, w], -1).reshape(-1, 3).float()


def to_model(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) (array, list or tensor) -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(np.stack(list(images)) if not hasattr(images, "shape") else images))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class SubjectGenerator(nn.Module):
    """Prompt + reference images -> image. ``save_pretrained`` writes a self-describing folder
    (transformer/, text_encoder/, tokenizer/, generator_config.json)."""

    def __init__(self, transformer: FluxTransformer2DModel, text_encoder: CLIPTextModel, tokenizer,
                 config: GeneratorConfig, vae: AutoencoderKL | None = None, text_encoder_2=None, tokenizer_2=None):
        super().__init__()
        self.transformer, self.text_encoder, self.tokenizer, self.config = transformer, text_encoder, tokenizer, config
        # FLUX's second text encoder (T5): per-token states come from it, the pooled one from CLIP.
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        if (vae is None) != (config.latent_channels == 0):
            raise ValueError("an autoencoder is needed exactly when config.latent_channels > 0")
        self.vae = vae
        # SerialGen's standardizer (models/conditioning.py): an analyser and a conditioner of the
        # references; None in a plain generator.
        self.ref_analyser, self.ref_conditioner = None, None
        # A generator trained on standardized references (sft.standardize_refs) carries the frozen
        # standardizer that maps them (models/standardizer.py): not a submodule, never trained.
        self.standardizer = None
        transformer.set_attn_processor(Fp32CpuAttention())  # bf16 autocast on CPU: see models/attention.py
        if vae is not None:
            vae.requires_grad_(False).eval()  # frozen, as FLUX's VAE
            if vae.config.latent_channels != config.latent_channels:
                raise ValueError(f"autoencoder has {vae.config.latent_channels} latent channels, config says "
                                 f"{config.latent_channels}")
        expected = config.channels
        if config.prediction not in ("velocity", "sample"):
            raise ValueError(f"prediction must be 'velocity' or 'sample', not {config.prediction!r}")
        if transformer.config.in_channels != expected:
            raise ValueError(f"transformer in_channels {transformer.config.in_channels} != 3 * patch**2 = {expected}")

    # --- construction and persistence ---------------------------------------------------------

    @classmethod
    def tiny(cls, config: GeneratorConfig | None = None, width: int = 128, double_blocks: int = 2,
             single_blocks: int = 4, heads: int = 4, text_hidden: int = 64, text_layers: int = 2,
             text_tokens: int = 32, seed: int = 0, vae: AutoencoderKL | None = None) -> "SubjectGenerator":
        """A freshly initialised generator sized for the world (about 2.3M transformer
        parameters at the defaults); with ``vae`` it works in that autoencoder's latent space."""
        config = config or GeneratorConfig()
        if vae is not None:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            config = replace(config, latent_channels=vae.config.latent_channels, latent_factor=factor)
        head_dim = width // heads
        rope = (head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8)
        tokenizer = build_tokenizer(max_length=text_tokens)
        text = tiny_text_encoder(tokenizer, hidden=text_hidden, layers=text_layers, seed=seed)
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=config.channels, out_channels=config.channels, num_layers=double_blocks,
            num_single_layers=single_blocks, attention_head_dim=head_dim, num_attention_heads=heads,
            joint_attention_dim=text_hidden, pooled_projection_dim=text_hidden, guidance_embeds=False,
            axes_dims_rope=rope)
        return cls(transformer, text, tokenizer, config, vae)

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.config.base:  # real profile: the base weights stay where they are, the adapter is saved
            from .flux import save_lora

            save_lora(self, d)
            (d / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
            return _save_extras(self, d)
        self.transformer.save_pretrained(d / "transformer")
        self.text_encoder.save_pretrained(d / "text_encoder")
        # Encoding sets padding and truncation on the backend tokenizer, which would be saved with it:
        # cleared, so a folder is the same whether or not the model encoded a prompt before saving
        # (a run resumed from its final checkpoint does not).
        self.tokenizer.backend_tokenizer.no_truncation()
        self.tokenizer.backend_tokenizer.no_padding()
        self.tokenizer.save_pretrained(d / "tokenizer")
        if self.vae is not None:
            self.vae.save_pretrained(d / "vae")
        (d / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        return _save_extras(self, d)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SubjectGenerator":
        d = Path(directory)
        config = GeneratorConfig(**json.loads((d / CONFIG_NAME).read_text()))
        if config.base:
            from .flux import load_lora

            return _load_extras(load_lora(d, config), d)
        vae = AutoencoderKL.from_pretrained(d / "vae") if config.latent_channels else None
        return _load_extras(cls(FluxTransformer2DModel.from_pretrained(d / "transformer"),
                                CLIPTextModel.from_pretrained(d / "text_encoder"),
                                AutoTokenizer.from_pretrained(d / "tokenizer"), config, vae), d)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # frozen: no dropout or norm statistics to update
        return self

    # --- tokens -----------------------------------------------------------------------------

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in the model's space -> (B, grid*grid, C*p*p) patch tokens in raster order."""
        p, g, c = self.config.patch, self.config.grid, self.config.space_channels
        b = x.shape[0]
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        p, g, c = self.config.patch, self.config.grid, self.config.space_channels
        b = tokens.shape[0]
        return tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """uint8 images (B, H, W, 3) -> (B, C, S, S) in the model's space: pixels in [-1, 1],
        or the autoencoder's normalised latents (its posterior mean)."""
        x = to_model(images).to(self.device)
        if self.vae is None:
            return x
        z = self.vae.encode(x).latent_dist.mean
        return (z - (self.vae.config.shift_factor or 0.0)) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_images(self, x: torch.Tensor) -> np.ndarray:
        """(B, C, S, S) in the model's space -> uint8 images (B, H, W, 3)."""
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)).sample
        return to_uint8(x)

    def to_space(self, images) -> torch.Tensor:
        """Images given as uint8 arrays are encoded; float tensors are already in the model's space."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images.to(self.device)
        return self.encode_images(images)

    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token hidden states (B, L, D) and the pooled [EOS] state (B, D)."""
        enc = tokenize(self.tokenizer, list(prompts)).to(self.device)
        out = self.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        if self.text_encoder_2 is None:
            return out.last_hidden_state, out.pooler_output
        enc2 = tokenize(self.tokenizer_2, list(prompts)).to(self.device)
        return self.text_encoder_2(input_ids=enc2.input_ids).last_hidden_state, out.pooler_output

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor],
                 refs: torch.Tensor) -> torch.Tensor:
        """The predicted velocity of the target. ``x_t``: (B, N, C) noisy target tokens; ``t``:
        (B,) in [0, 1]; ``refs``: (B, k, N, C) clean reference tokens (k may be 0)."""
        b, n, c = x_t.shape
        k = refs.shape[1]
        seq = torch.cat([x_t, refs.reshape(b, k * n, c)], 1) if k else x_t
        hidden, pooled = text
        img_ids = frame_ids(1 + k, self.config.grid).to(x_t.device)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=x_t.device)
        extra = {"guidance": torch.full((b,), self.config.flux_guidance, device=x_t.device, dtype=x_t.dtype)} \
            if self.transformer.config.guidance_embeds else {}
        out = self.transformer(hidden_states=seq, encoder_hidden_states=hidden, pooled_projections=pooled,
                               timestep=t.to(x_t.dtype), img_ids=img_ids, txt_ids=txt_ids, return_dict=False,
                               **extra)[0]
        out = out[:, :n]
        if self.config.prediction == "sample":  # x0 -> v = (x_t - x0) / t
            return (x_t - out) / t.to(x_t.dtype).clamp(min=self.config.min_t)[:, None, None]
        return out

    def ref_tokens(self, refs: Sequence[Sequence[np.ndarray]] | torch.Tensor) -> torch.Tensor:
        """(B, k, N, C) tokens of every sample's k references: uint8 images (same k per
        sample), or a tensor (B, k, C, S, S) already in the model's space."""
        if isinstance(refs, torch.Tensor):
            b, k = refs.shape[:2]
            if k == 0:
                return refs.new_zeros(b, 0, self.config.grid ** 2, self.config.channels)
            refs = refs.to(self.device)
            return condition(self, self.pack(refs.flatten(0, 1)).reshape(b, k, -1, self.config.channels), refs)
        k = len(refs[0])
        if any(len(r) != k for r in refs):
            raise ValueError("every sample of a batch needs the same number of references")
        if k == 0:
            return torch.zeros(len(refs), 0, self.config.grid ** 2, self.config.channels, device=self.device)
        flat = self.encode_images([im for r in refs for im in r])
        return condition(self, self.pack(flat).reshape(len(refs), k, -1, self.config.channels),
                         flat.reshape(len(refs), k, *flat.shape[1:]))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor],
                refs: torch.Tensor) -> torch.Tensor:
        """The network's prediction, as a velocity (see ``velocity``). Training objectives live
        in ``components/objectives``; they call the model's pieces, not a loss of its own."""
        return self.velocity(x_t, t, text, refs)

    # --- sampling ---------------------------------------------------------------------------

    def guided_velocity(self, x, t, cond, uncond, ref, blank, guidance: float) -> torch.Tensor:
        """The CFG velocity. The two branches are two transformer calls: one call on a batch of
        2B was slower on CPU at the pipeline's batch sizes (docs/performance.md)."""
        v = self.velocity(x, t, cond, ref).float()
        if guidance == 1.0:
            return v
        v_uncond = self.velocity(x, t, uncond, blank).float()
        return v_uncond + guidance * (v - v_uncond)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], refs, steps: int = 20, guidance: float = 1.0, seed: int = 0,
               sde: bool = False, eta: float = 0.7, precision: str = "fp32", noise: torch.Tensor | None = None) -> dict:
        """Images for ``prompts`` and references. ODE (Euler, t = 1 -> 0) by default; with
        ``sde`` Flow-GRPO's SDE, also returning every step's latents and log-probabilities
        (``log_probs`` (B, steps), ``latents`` (B, steps + 1, N, C)) for the RL stage.
        ``precision`` "bf16" runs the transformer under bf16 autocast; the state being integrated,
        the CFG combination and the log-probabilities stay fp32. ``noise`` (B, N, C): the starting
        noise, instead of one drawn from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        b, n, c = len(prompts), self.config.grid ** 2, self.config.channels
        ref = self.ref_tokens(refs)
        blank = torch.full_like(ref, -1.0)
        cond, uncond = self.encode_text(prompts), self.encode_text([""] * b)
        ts = torch.linspace(1.0, 0.0, steps + 1)
        x = (torch.randn(b, n, c, generator=g) if noise is None else noise.float()).to(self.device)
        latents, log_probs = [x], []
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            with autocast(self.device, precision):
                v = self.guided_velocity(x, t.expand(b).to(self.device), cond, uncond, ref, blank, guidance)
            if sde:
                mean, std = sde_step_moments(x, v, float(t), float(t_next), float(ts[1]), eta)
                x_next = mean + std * torch.randn(x.shape, generator=g).to(self.device)
                log_probs.append(gaussian_log_prob(x_next, mean, std))
            else:
                x_next = x + (t_next - t) * v
            x = x_next
            latents.append(x)
        out = {"images": self.decode_images(self.unpack(x))}
        if sde:
            out.update(log_probs=torch.stack(log_probs, 1), latents=torch.stack(latents, 1))
        return out


def autocast(device: torch.device, precision: str):
    """The autocast context of a sampling ``precision`` (fp32: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def sde_step_moments(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, t_max: float,
                     eta: float) -> tuple[torch.Tensor, float]:
    """Mean and std of one Flow-GRPO SDE step from t to t_next < t (Liu et al., 2025, eq. 9):
    sigma_t = eta * sqrt(t / (1 - t)) (at t = 1 the next level, ``t_max``, stands in for t in
    the denominator), mean = x + dt [v + sigma_t^2 / (2t) (x + (1 - t) v)] with dt = t_next - t,
    std = sigma_t * sqrt(-dt). The marginals match the ODE's."""
    dt = t_next - t
    sigma = eta * math.sqrt(t / (1 - (t_max if t >= 1 else t)))
    mean = x * (1 + sigma ** 2 / (2 * t) * dt) + v * (1 + sigma ** 2 * (1 - t) / (2 * t)) * dt
    return mean, sigma * math.sqrt(-dt)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Per-sample mean log-density of x under N(mean, std^2), averaged over all but the batch dim
    (Flow-GRPO's convention)."""
    lp = -((x - mean) ** 2) / (2 * std ** 2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x.ndim)))


def _save_extras(model: SubjectGenerator, d: Path) -> Path:
    """What a generator folder holds besides the networks: reference conditioning, standardizer."""
    conditioning.save(model, d)
    if model.standardizer is not None:
        model.standardizer.save(d)
    return d


def _load_extras(model: SubjectGenerator, d: Path) -> SubjectGenerator:
    from .standardizer import Standardizer

    conditioning.load(model, d)
    model.standardizer = Standardizer.load_from(d)
    return model
