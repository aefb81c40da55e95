"""Model FLOP utilisation: the machine's matmul peak and what training and sampling achieve of it.

    python perf/mfu.py [--train-steps 8] [--sample-images 64] [--rounds 3] [--threads N] [--no-pipeline]
    PYTHONPATH=<checkout of another commit> python perf/mfu.py    # the same on that commit's code

In one run, on this machine:
1. the matmul peak, fp32 and bf16 (square matmuls, best of several, on torch's threads);
2. a training step of the default generator as the pipeline configures it (params.yaml: the
   architecture, ``training.batch_size``, ``training.mixed_precision``, the stage's ``compile``,
   the shared Trainer with the flow-matching objective), for pretrain's batches (1 reference) and
   SFT's largest (4 references); a compiled step is timed after its compilation; then (unless
   ``--no-pipeline``) SFT's other reference counts and the seconds the pipeline's whole training
   takes at these rates (pretrain's and sft's steps, sft's reference mix, the compilation): the
   time per trained sample the issue-21 goal (2x) is about;
3. sampling as the pipeline samples (``generator.sample_steps`` steps, CFG ``generator.guidance``):
   a batch of ``--sample-images`` 1-reference images (``multisubject``'s redraws) and 4-reference
   images (the benchmark's Four subset).

FLOPs are counted by ``torch.utils.flop_counter`` on one real step (matmuls and attention,
forward and backward; the CPU attention kernel is counted with the formula of the others), so
achieved FLOP/s = counted FLOPs / measured seconds. Each line prints samples (or images) per
second (the best of ``--rounds``: these machines are noisy), GFLOP/s and achieved / peak against
both peaks. The script only calls the project's own code paths, so running it on two commits
compares them (``PYTHONPATH`` first: the venv's editable install points at this checkout).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from components import world
from components.config import load_params
from components.objectives import FlowMatching, FlowMatchingBatch
from components.training import LoopConfig, Trainer
from components.training.fit import build_generator


def _count_cpu_attention() -> None:
    """The CPU flash-attention kernel is not in flop_counter's registry: count it as the others."""
    ops = torch.ops.aten
    fwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu", None)
    if fwd is None or fwd in torch.utils.flop_counter.flop_registry:
        return

    @register_flop_formula(fwd)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    bwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if bwd is not None:
        @register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)  # dq, dk, dv: twice the forward


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an (n x n) @ (n x n) matmul."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 3)
    return 2 * n ** 3 / best / 1e9


def _rows(n: int, refs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    samples = [world.sample_single(rng, pool) if refs == 1 else world.sample_task(rng, "Four", pool)
               for _ in range(n)]
    return samples, [[world.render(r).image for r in s.refs[:refs]] for s in samples]


def _batch(n: int, refs: int) -> FlowMatchingBatch:
    samples, ref_imgs = _rows(n, refs)
    rendered = [world.render(s.target) for s in samples]
    return FlowMatchingBatch(np.stack([r.image for r in rendered]), [s.prompt for s in samples], ref_imgs,
                             np.stack([r.labels for r in rendered]))


def training(params, stage: str, refs: int, steps: int, rounds: int) -> tuple[float, float, float]:
    """(samples/s, FLOPs per sample, seconds of compilation) of ``stage``'s training step on
    batches with ``refs`` references: the best of ``rounds`` rounds of ``steps`` steps. FLOPs are
    counted on an eager step (a compiled graph does not dispatch the aten ops the counter sees);
    the compilation is what the three warm-up steps took beyond three timed steps."""
    cfg = params.train_config(stage)
    batch = _batch(cfg.batch_size, refs)
    objective = FlowMatching(drop_text=cfg.drop_text, drop_refs=cfg.drop_refs, drop_both=cfg.drop_both,
                             subject_weight=cfg.subject_weight)

    def trainer(tmp: str, compiled: bool) -> Trainer:
        loop = LoopConfig(steps=10 ** 6, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                          grad_accum=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                          max_grad_norm=cfg.max_grad_norm, ema_decay=cfg.ema_decay, log_every=10 ** 6,
                          **({"compile": True} if compiled else {}))
        model = build_generator(params.generator, params.synthesize.resolution, seed=0)
        t = Trainer(model, objective, loop, tmp, make_batch=lambda rng, gen: batch)
        t.module.train()
        return t

    with tempfile.TemporaryDirectory() as tmp:
        counting = trainer(tmp + "/count", compiled=False)
        counting.step()
        with FlopCounterMode(display=False) as counter:
            counting.step()
        flops = counter.get_total_flops() / (cfg.batch_size * cfg.grad_accum)
        timed = trainer(tmp + "/timed", compiled=getattr(cfg, "compile", False))
        t0 = time.perf_counter()
        for _ in range(3):  # warm-up (and, when compiled, compilation)
            timed.step()
        warm = time.perf_counter() - t0
        seconds = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(steps):
                timed.step()
            seconds = min(seconds, time.perf_counter() - t0)
    rate = steps * cfg.batch_size * cfg.grad_accum / seconds
    return rate, flops, max(warm - 3 * seconds / steps, 0.0)


def sampling(params, refs: int, images: int, rounds: int) -> tuple[float, float]:
    """(images/s, FLOPs per image) of the sampler at the pipeline's steps and CFG scale: the best
    of ``rounds`` batches."""
    model = build_generator(params.generator, params.synthesize.resolution, seed=0).eval()
    samples, ref_imgs = _rows(images, refs, seed=1)
    prompts = [s.prompt for s in samples]
    kw = {"steps": params.generator.sample_steps, "guidance": params.generator.guidance}
    if hasattr(params.generator, "sample_precision"):  # not before the bf16 sampler existed
        kw["precision"] = params.generator.sample_precision
    model.sample(prompts[:4], ref_imgs[:4], **kw)  # warm-up
    with FlopCounterMode(display=False) as counter:
        model.sample(prompts[:8], ref_imgs[:8], **{**kw, "steps": 1})
    flops = counter.get_total_flops() / 8 * kw["steps"]
    seconds = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.sample(prompts, ref_imgs, **kw)
        seconds = min(seconds, time.perf_counter() - t0)
    return images / seconds, flops


def pipeline_training(params, rates: dict, compile_seconds: float, args) -> None:
    """The seconds the pipeline's training takes at the measured rates: pretrain's steps of one
    reference and sft's steps over its reference counts (``sft.ref_count_probs``; the counts other
    than 4 measured here), plus the compilation measured (one shape per compiled stage: a
    compiled sft would compile more, so this is a lower bound for it), and so the seconds per
    trained sample over the whole pipeline."""
    probs = {int(k): v for k, v in params.sft.ref_count_probs.items() if v > 0}
    for k in sorted(probs):
        if ("sft", k) not in rates:
            rates["sft", k] = training(params, "sft", k, args.train_steps, args.rounds)[0]
            print(f"{f'train step, {k} ref(s), batch {params.training.batch_size} (sft)':<44} {rates['sft', k]:>6.1f} sa",
                  flush=True)
    pre, sft = params.train_config("pretrain"), params.train_config("sft")
    n_pre, n_sft = pre.steps * pre.batch_size * pre.grad_accum, sft.steps * sft.batch_size * sft.grad_accum
    total = sum(probs.values())
    seconds = compile_seconds + n_pre / rates["pretrain", 1] + n_sft * sum(p / total / rates["sft", k]
                                                                          for k, p in probs.items())
    print(f"pipeline's training: pretrain {n_pre} samples (1 ref) + sft {n_sft} (refs {probs}): {seconds:.0f} s "
          f"(warm-up and compilation {compile_seconds:.0f} s), {1e3 * seconds / (n_pre + n_sft):.2f} ms per sample", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--sample-images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per line; the best is printed (noisy machines)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the pipeline's whole training (3 more lines)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    _count_cpu_attention()
    params = load_params()
    fp32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; training.mixed_precision "
          f"{params.training.mixed_precision!r}, {params.generator.sample_steps} sampling steps, CFG "
          f"{params.generator.guidance}, sampling precision {getattr(params.generator, 'sample_precision', 'fp32')!r}")
    print(f"matmul peak: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s")
    print(f"{'work':<44} {'per s':>8} {'GFLOP/s':>8} {'/fp32 peak':>10} {'/bf16 peak':>10}")

    def line(name: str, rate: float, flops: float, unit: str) -> None:
        achieved = rate * flops / 1e9
        print(f"{name:<44} {rate:>6.1f} {unit:<2}{achieved:>7.1f} {achieved / fp32:>10.2f} {achieved / bf16:>10.2f}",
              flush=True)

    rates, compile_seconds = {}, 0.0
    for stage, refs in (("pretrain", 1), ("sft", 4)):
        rates[stage, refs], flops, compiling = training(params, stage, refs, args.train_steps, args.rounds)
        compile_seconds += compiling
        compiled = getattr(params.train_config(stage), "compile", False)
        line(f"train step, {refs} ref(s), batch {params.training.batch_size}{', compiled' if compiled else ''}",
             rates[stage, refs], flops, "sa")
    if not args.no_pipeline:
        pipeline_training(params, rates, compile_seconds, args)
    for refs in (1, 4):
        rate, flops = sampling(params, refs, args.sample_images, args.rounds)
        line(f"sample, {refs} ref(s), batch {args.sample_images}", rate, flops, "im")


if __name__ == "__main__":
    main()
