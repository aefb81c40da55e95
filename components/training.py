"""The one training loop every generator stage shares.

accelerate runs it: one CPU process by default, several through ``accelerate launch`` (on CPU:
``accelerate launch --multi_gpu --num_processes 2`` with ``Accelerator(cpu=True)``, which this
loop creates). It does gradient accumulation, mixed precision by config, an optional EMA of the
weights, and checkpoints every N steps holding model, optimizer, LR schedule, EMA, RNG states and
the step. ``resume`` continues from the newest checkpoint to the same weights an uninterrupted
run reaches: every step's randomness (batch choice, noise, dropout) is derived from (seed, rank,
step, micro-step), never from state that a restart would lose.

A stage supplies ``make_batch(rng, generator) -> batch`` and ``loss_fn(model, batch, generator)
-> loss``; the loop reports loss, learning rate and throughput through ``on_log`` and calls
``on_sample(model, step)`` every ``sample_every`` steps (both on the main process only).
"""
from __future__ import annotations

import copy
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

CHECKPOINTS = "checkpoints"


@dataclass
class LoopConfig:
    steps: int
    batch_size: int  # per process and micro-step
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = None
    checkpoint_every: int = 0  # 0: only the final state
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0
    seed: int = 0


@dataclass
class LoopResult:
    model: torch.nn.Module  # unwrapped; the EMA weights when EMA is on
    raw_model: torch.nn.Module  # unwrapped, the optimised weights
    history: list[dict] = field(default_factory=list)
    step: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0


class EMA:
    """Exponential moving average of a model's parameters (buffers copied).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    random initial weights do not linger in the average of a short run (with a flat 0.999
    they would still weigh e^-2 after 2000 steps)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = int(state["updates"])


class _Step:
    """The step counter, checkpointed with the rest."""

    def __init__(self):
        self.value = 0

    def state_dict(self) -> dict:
        return {"step": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = int(state["step"])


def schedule(cfg: LoopConfig) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to 10% at the last step."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
    return f


def step_randomness(seed: int, rank: int, step: int, micro: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one micro-step: a pure function of its coordinates."""
    rng = np.random.default_rng([seed, rank, step, micro])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def process_state() -> PartialState:
    """This process's place among the training processes. Ask here, not ``PartialState()``: on
    a machine without CUDA, the first PartialState made without ``cpu=True`` under ``accelerate
    launch --multi_gpu`` silently becomes a single process (every rank rank 0), and accelerate
    keeps that first state for the whole process."""
    return PartialState(cpu=not torch.cuda.is_available())


def latest_checkpoint(out_dir: Path) -> Path | None:
    folder = Path(out_dir) / CHECKPOINTS
    found = sorted(folder.glob("step-*")) if folder.is_dir() else []
    return found[-1] if found else None


def train_loop(model: torch.nn.Module, make_batch: Callable[[np.random.Generator, torch.Generator], Any],
               loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor], cfg: LoopConfig,
               out_dir: str | Path, resume: bool = True, on_log: Callable[[int, dict], None] | None = None,
               on_sample: Callable[[torch.nn.Module, int], None] | None = None,
               accelerator: Accelerator | None = None) -> LoopResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps; checkpoints go to ``out_dir/checkpoints``."""
    out_dir = Path(out_dir)
    process_state()  # before anything else asks: see process_state
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The scheduler is stepped here, once per optimizer step, not through accelerate (which
    # would step it once per process).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg))
    model, opt = acc.prepare(model, opt)
    ema = EMA(acc.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    counter = _Step()
    acc.register_for_checkpointing(sched, counter, *([ema] if ema else []))
    resumed_from = None
    if resume and (ckpt := latest_checkpoint(out_dir)) is not None:
        acc.load_state(str(ckpt))
        resumed_from = counter.value
    history: list[dict] = []
    t0 = time.perf_counter()
    window_t, window_samples = time.perf_counter(), 0
    model.train()
    while counter.value < cfg.steps:
        step = counter.value
        total = 0.0
        for micro in range(cfg.grad_accum):
            rng, gen = step_randomness(cfg.seed, acc.process_index, step, micro)
            batch = make_batch(rng, gen)
            sync = micro == cfg.grad_accum - 1
            with (nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                loss = loss_fn(model, batch, gen) / cfg.grad_accum
            acc.backward(loss)
            total += loss.detach().float().item()
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema:
            ema.update(acc.unwrap_model(model))
        counter.value += 1
        window_samples += cfg.batch_size * cfg.grad_accum * acc.num_processes
        done = counter.value
        if done % cfg.log_every == 0 or done == cfg.steps:
            loss_mean = acc.reduce(torch.tensor(total), reduction="mean").item()
            now = time.perf_counter()
            record = {"step": done, "loss": loss_mean, "local_loss": total, "lr": sched.get_last_lr()[0],
                      "samples_per_second": window_samples / max(now - window_t, 1e-9)}
            window_t, window_samples = now, 0
            history.append(record)
            if on_log and acc.is_main_process:
                on_log(done, record)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _checkpoint(acc, out_dir, done, cfg.keep_checkpoints)
        if on_sample and cfg.sample_every and done % cfg.sample_every == 0 and acc.is_main_process:
            on_sample(ema.shadow if ema else acc.unwrap_model(model), done)
            model.train()
    _checkpoint(acc, out_dir, counter.value, cfg.keep_checkpoints)
    acc.wait_for_everyone()
    raw = acc.unwrap_model(model).eval()
    return LoopResult(ema.shadow if ema else raw, raw, history, counter.value, resumed_from,
                      time.perf_counter() - t0)


def _checkpoint(acc: Accelerator, out_dir: Path, step: int, keep: int) -> None:
    target = out_dir / CHECKPOINTS / f"step-{step:07d}"
    acc.wait_for_everyone()
    acc.save_state(str(target))
    if acc.is_main_process:
        for old in sorted((out_dir / CHECKPOINTS).glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()

