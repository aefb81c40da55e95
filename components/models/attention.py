"""FLUX attention with the attention itself kept in fp32 on CPU under bf16 autocast.

Under bf16 autocast the projections run at the bf16 matmul peak (4x fp32's on these CPUs), but
PyTorch's CPU flash-attention kernel is slower in bf16 than in fp32 (its backward about 3x slower
at the default size), and RMSNorm falls back from its fused kernel when input and weight differ
in dtype (``docs/performance.md``). This processor is diffusers' ``FluxAttnProcessor`` with one
change: on CPU, when the projections come out in a reduced precision, everything between them and
the output projection (the q/k norms, RoPE, the attention product) runs in fp32, and the result is
cast back. RoPE is one complex product instead of diffusers' seven element-wise passes. Elsewhere
(fp32, or a GPU) it computes what diffusers' does (checked to the bit in fp32, LoRA adapters
included), for the way this project calls the transformer: no attention mask
(a mask is passed to attention as given, not reshaped as diffusers' dispatch would), separate
q/k/v projections (not ``fuse_qkv_projections``), diffusers' native attention backend.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_flux import _get_qkv_projections


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim))


def rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """FLUX's RoPE on ``x`` (B, L, heads, head_dim) as one complex product: the pairs (x[2j],
    x[2j+1]) turned by the angles of ``rotation`` (L, head_dim / 2, complex). The same numbers as
    diffusers' ``apply_rotary_emb(use_real=True)`` (to the bit in the forward), in one pass
    instead of its seven (unbind, neg, stack, two casts, two products): 6-20% of a bf16 training
    step at the default size (docs/performance.md)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation[None, :, None]).flatten(3).type_as(x)


def rotation_of(image_rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The complex angles of FLUX's ``(cos, sin)`` pair, whose columns come repeated in pairs."""
    cos, sin = image_rotary_emb
    return torch.complex(cos[:, ::2].float(), sin[:, ::2].float())


class Fp32CpuAttention:
    """Attention processor of ``FluxAttention`` (set with ``transformer.set_attn_processor``)."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        dtype = v.dtype
        upcast = v.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
        if upcast:  # from here to the output projection in fp32 (also RMSNorm's fused kernel wants it)
            q, k, v, eq, ek, ev = (x if x is None else x.float() for x in (q, k, v, eq, ek, ev))
        q, k, v = (_heads(x, attn.head_dim) for x in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.added_kv_proj_dim is not None:  # double-stream block: text tokens first, as FLUX orders them
            eq, ek, ev = (_heads(x, attn.head_dim) for x in (eq, ek, ev))
            q = torch.cat([attn.norm_added_q(eq), q], 1)
            k = torch.cat([attn.norm_added_k(ek), k], 1)
            v = torch.cat([ev, v], 1)
        if image_rotary_emb is not None:
            rotation = rotation_of(image_rotary_emb)
            q, k = rotary(q, rotation), rotary(k, rotation)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, L, head_dim)
        with torch.autocast("cpu", enabled=False) if upcast else nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(dtype)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], 1)
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())
