"""Second round of issue 21's training levers: where the bf16 step's time goes and what cuts it.

    python docs/experiments/step_levers.py attention [--refs 1]   # the attention kernel, ablated
    python docs/experiments/step_levers.py levers [--refs 1]      # text length, RoPE, GELU, layout
    python docs/experiments/step_levers.py compile [--refs 1,2,3,4] [--mode static|dynamic]

``attention`` and ``levers`` build one model per variant in one process (the shipped bf16 autocast
step on one batch of 16) and time them interleaved, best of ``--rounds``; each line is a variant's
samples/s and its ratio to the first line. ``compile`` trains with the shared Trainer as pretrain
does (``LoopConfig.compile``) over batches of each reference count in turn, printing how long the
first two steps of each count take (compilation) and then samples/s per count; run it without
``--mode`` for the eager figures of the same moment. Findings: experiments/speed-levers.md.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))

from diffusers.models.embeddings import apply_rotary_emb
from mfu import _batch
from speed_levers import interleaved_best

from components.config import load_params
from components.models import attention
from components.models.text import build_tokenizer, tiny_text_encoder
from components.objectives import FlowMatching
from components.training import LoopConfig, Trainer
from components.training.fit import build_generator

SDPA = F.scaled_dot_product_attention
ROTARY = attention.rotary


def _math(q, k, v, dtype):
    """Attention as two matmuls in ``dtype`` around a softmax in fp32 (the L x L matrix materialised)."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    p = ((q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])).softmax(-1)
    return (p.to(dtype) @ v).float()


ATTENTION = {  # what runs where models/attention.py calls F.scaled_dot_product_attention (fp32 q, k, v)
    "fp32 flash (shipped)": SDPA,
    "none (v passed through)": lambda q, k, v, attn_mask=None: v * 1.0,
    "bf16 flash": lambda q, k, v, attn_mask=None: SDPA(q.bfloat16(), k.bfloat16(), v.bfloat16()).float(),
    "bf16 math": lambda q, k, v, attn_mask=None: _math(q, k, v, torch.bfloat16),
    "fp32 math": lambda q, k, v, attn_mask=None: _math(q, k, v, torch.float32),
}


def _diffusers_rotary(x, rotation):  # what models/attention.py did before: diffusers' seven passes
    cos = torch.view_as_real(rotation)[..., 0].repeat_interleave(2, -1)
    sin = torch.view_as_real(rotation)[..., 1].repeat_interleave(2, -1)
    return apply_rotary_emb(x, (cos, sin), sequence_dim=1)


LEVERS = {  # name -> (text tokens, rotary, sdpa, erf GELU)
    "text 48, diffusers RoPE (before)": (48, _diffusers_rotary, SDPA, False),
    "text 32": (32, _diffusers_rotary, SDPA, False),
    "text 32, complex RoPE (shipped)": (32, ROTARY, SDPA, False),
    "text 32, complex RoPE, contiguous q/k/v": (32, ROTARY, lambda q, k, v, attn_mask=None: SDPA(
        q.contiguous(), k.contiguous(), v.contiguous()), False),
    "text 32, complex RoPE, erf GELU": (32, ROTARY, SDPA, True),
}


class _F:
    """``torch.nn.functional`` with another scaled_dot_product_attention (models/attention.py's ``F``)."""

    def __init__(self, sdpa):
        self.scaled_dot_product_attention = sdpa

    def __getattr__(self, name):
        return getattr(F, name)


def _model(params, text_tokens: int | None = None, erf: bool = False):
    model = build_generator(params.generator, params.synthesize.resolution, seed=0).train()
    if text_tokens and text_tokens != model.tokenizer.model_max_length:
        model.tokenizer = build_tokenizer(max_length=text_tokens)
        model.text_encoder = tiny_text_encoder(model.tokenizer, hidden=params.generator.text_hidden,
                                               layers=params.generator.text_layers)
    if erf:  # FLUX's MLPs use the tanh GELU (torch.nn.GELU in single blocks, diffusers' GELU in double ones)
        for m in model.transformer.modules():
            if hasattr(m, "approximate"):
                m.approximate = "none"
    return model


def interleaved(params, args, variants: dict[str, tuple]) -> None:
    """variants: name -> (model, rotary, sdpa). One batch, one optimizer per model, bf16 autocast."""
    batch = _batch(args.batch, args.refs)
    objective = FlowMatching(0.1, 0.05, 0.05, params.training.subject_weight)
    runs = {name: (m, torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True), rot, sdpa)
            for name, (m, rot, sdpa) in variants.items()}

    def step(name, i):
        model, opt, rot, sdpa = runs[name]
        attention.rotary, attention.F = rot, _F(sdpa)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = objective(model, batch, torch.Generator().manual_seed(i))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            attention.rotary, attention.F = ROTARY, F

    for name in runs:
        step(name, 0), step(name, 1)
    best = interleaved_best(list(runs), step, args.rounds, 5)
    first = next(iter(best.values()))
    print(f"training step, batch {args.batch}, {args.refs} reference(s), bf16; torch threads {torch.get_num_threads()}")
    for name, s in best.items():
        print(f"  {name:<42} {args.batch / s:7.1f} samples/s  {s * 1e3:6.1f} ms/step  ratio {first / s:.2f}")


def compiled(params, args) -> None:
    cfg = params.train_config("sft")
    counts = [int(r) for r in args.refs_list.split(",")]
    batches = {r: _batch(cfg.batch_size, r) for r in counts}
    current = [counts[0]]
    model = build_generator(params.generator, params.synthesize.resolution, seed=0)
    if args.mode:
        model.transformer.compile(dynamic=args.mode == "dynamic")
    loop = LoopConfig(steps=10 ** 6, batch_size=cfg.batch_size, lr=cfg.lr, mixed_precision=cfg.mixed_precision,
                      ema_decay=cfg.ema_decay, log_every=10 ** 6)
    objective = FlowMatching(cfg.drop_text, cfg.drop_refs, cfg.drop_both, cfg.subject_weight)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, objective, loop, tmp, make_batch=lambda rng, gen: batches[current[0]])
        trainer.module.train()
        for r in counts:
            current[0], t0 = r, time.perf_counter()
            trainer.step(), trainer.step()
            print(f"{args.mode or 'eager'}: {r} ref(s), first two steps {time.perf_counter() - t0:.1f} s", flush=True)
        for r in counts:
            current[0], best = r, float("inf")
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for _ in range(6):
                    trainer.step()
                best = min(best, time.perf_counter() - t0)
            print(f"{args.mode or 'eager'}: {r} ref(s) {6 * cfg.batch_size / best:7.1f} samples/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["attention", "levers", "compile"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--refs", type=int, default=1)
    ap.add_argument("--refs-list", default="1,2,3,4", help="compile: the reference counts, in order")
    ap.add_argument("--mode", choices=["static", "dynamic"], default=None, help="compile: torch.compile's dynamic")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    params = load_params()
    if args.what == "attention":
        interleaved(params, args, {name: (_model(params), ROTARY, fn) for name, fn in ATTENTION.items()})
    elif args.what == "levers":
        interleaved(params, args, {name: (_model(params, tokens, erf), rot, sdpa)
                                   for name, (tokens, rot, sdpa, erf) in LEVERS.items()})
    else:
        compiled(params, args)


if __name__ == "__main__":
    main()
