"""The one trainer every training stage shares.

accelerate runs it: one CPU process by default, several through ``accelerate launch`` (on CPU:
``accelerate launch --multi_gpu --num_processes 2`` with ``Accelerator(cpu=True)``, which the
trainer creates). It does gradient accumulation, mixed precision by config, an optional EMA of
the weights, and checkpoints every N steps holding model, optimizer, LR schedule, EMA, RNG
states, the step and the collected experience. A resumed run reaches the weights of an
uninterrupted one: every step's randomness (batch choice, noise, dropout, rollouts) is derived
from (seed, rank, step, micro-step), never from state that a restart would lose.

A stage supplies the model, an objective (``components/objectives``) and where batches come from:
- ``make_batch(rng, generator) -> batch``, offline data, one call per micro-step; or
- ``collect(model, rng, generator) -> [batch, ...]``, on-policy experience gathered from the
  current weights (no gradients) whenever the last collection is used up; the trainer then makes
  ``inner_epochs`` passes over it, ``grad_accum`` batches per optimizer step.
Either one with ``state_dict``/``load_state_dict`` (a reward normaliser, batch counters) is
checkpointed with the rest. The history of logged steps and the training time are checkpointed
too, so a resumed run reports the whole run, not only its resumed part.
Every term the objective returns is averaged over micro-steps and processes and logged.

The structure follows improved-diffusion's ``TrainLoop``: run -> step -> forward_backward ->
optimize -> log / checkpoint.
"""
from __future__ import annotations

import copy
import math
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

from ..objectives import Objective, TrainModule

CHECKPOINTS = "checkpoints"
Batch = Any


@dataclass
class LoopConfig:
    steps: int
    batch_size: int  # per process and micro-step
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_accum: int = 1
    inner_epochs: int = 1  # passes over each collection (on-policy only)
    mixed_precision: str = "no"  # no | bf16 | fp16
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = None
    checkpoint_every: int = 0  # 0: only the final state
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0
    seed: int = 0
    compile: bool = False  # torch.compile the trained network (see Trainer)


@dataclass
class LoopResult:
    model: torch.nn.Module  # unwrapped; the EMA weights when EMA is on
    raw_model: torch.nn.Module  # unwrapped, the optimised weights
    history: list[dict] = field(default_factory=list)  # every logged step of the run, resumed or not
    step: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0  # training time of the whole run, before and after any resume


def compile_network(model: torch.nn.Module) -> None:
    """``torch.compile`` in place the network that does the work: a generator's ``transformer``,
    else the model itself. In place (``Module.compile``), so parameter names, state dicts and
    checkpoints are those of the eager model. Inductor fuses the element-wise work around the
    matmuls (norms, modulation, RoPE, casts) that dominates a step of the tiny default generator on
    CPU; it compiles once per input shape (40-90 s on 2 cores, cached on disk for later runs), so it
    pays for itself on a long run of one shape (pretrain), not on a few hundred steps over four
    (sft): docs/performance.md. Sample grids and rollouts run it eagerly (``eager``)."""
    # A machine without the C++ toolchain inductor needs trains eagerly (dynamo warns), not at all
    torch._dynamo.config.suppress_errors = True
    _network(model).compile()


def _network(model: torch.nn.Module) -> torch.nn.Module:
    """What ``compile_network`` compiles: a generator's transformer, else the model."""
    return getattr(model, "transformer", model)


@contextmanager
def eager(model: torch.nn.Module):
    """``model`` without its in-place compilation for the duration (sampling, rollouts: other
    shapes and no gradients would each compile anew), compiled again after."""
    net = _network(model)
    compiled = net._compiled_call_impl
    net._compiled_call_impl = None
    try:
        yield model
    finally:
        net._compiled_call_impl = compiled


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


class _Progress:
    """What a resumed run needs besides the weights to go on, and to report the whole run: the
    step, the on-policy experience (batches and how many were used), the logged history and the
    training seconds spent before the checkpoint. Checkpointed with the rest."""

    def __init__(self):
        self.step = 0
        self.experience: list[Batch] = []
        self.used = 0
        self.history: list[dict] = []
        self.seconds = 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "experience": self.experience, "used": self.used, "history": self.history,
                "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.experience, self.used = int(state["step"]), state["experience"], int(state["used"])
        self.history, self.seconds = list(state.get("history", [])), float(state.get("seconds", 0.0))


class _PerRank:
    """Checkpoints ``obj`` once per process. accelerate writes one copy of each registered object,
    the main process's: state that differs between ranks (the experience each collected, its batch
    counters, a collector's running baseline) would come back as rank 0's on every rank. Here every
    rank's state is gathered into the one copy, and each rank loads its own."""

    def __init__(self, obj, acc: Accelerator):
        self.obj, self.acc = obj, acc

    def state_dict(self) -> dict:
        from accelerate.utils import gather_object

        return {"ranks": gather_object([self.obj.state_dict()])}  # collective: every rank calls it

    def load_state_dict(self, state: dict) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.acc.num_processes:
            raise RuntimeError(f"the checkpoint was written by {len(ranks)} training process(es); resume it with as "
                               f"many (this run has {self.acc.num_processes})")
        self.obj.load_state_dict(ranks[self.acc.process_index])


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
    return _generators([seed, rank, step, micro])


def collect_randomness(seed: int, rank: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The generators of the collection made before optimizer step ``step`` (a stream apart
    from every micro-step's)."""
    return _generators([seed, rank, step, 0, 1])


def _generators(entropy: list[int]) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng(entropy)
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def process_state() -> PartialState:
    """This process's place among the training processes. Ask here, not ``PartialState()``: on
    a machine without CUDA, the first PartialState made without ``cpu=True`` under ``accelerate
    launch --multi_gpu`` silently becomes a single process (every rank rank 0), and accelerate
    keeps that first state for the whole process."""
    return PartialState(cpu=not torch.cuda.is_available())


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The complete checkpoints, oldest first (a checkpoint is written under a temporary name and
    renamed when whole, so a crash mid-write leaves nothing that looks complete)."""
    folder = Path(out_dir) / CHECKPOINTS
    return sorted(p for p in folder.glob("step-*") if not p.name.endswith(".tmp")) if folder.is_dir() else []


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint, if any."""
    found = complete_checkpoints(out_dir)
    return found[-1] if found else None


class Trainer:
    """Trains ``model`` with ``objective`` for ``cfg.steps`` optimizer steps; checkpoints go to
    ``out_dir/checkpoints``. Give exactly one of ``make_batch`` and ``collect`` (module docstring).
    ``on_log(step, record)`` and ``on_sample(model, step)`` run on the main process only."""

    def __init__(self, model: torch.nn.Module, objective: Objective, cfg: LoopConfig, out_dir: str | Path,
                 make_batch: Callable[[np.random.Generator, torch.Generator], Batch] | None = None,
                 collect: Callable[[torch.nn.Module, np.random.Generator, torch.Generator], list[Batch]] | None = None,
                 on_log: Callable[[int, dict], None] | None = None,
                 on_sample: Callable[[torch.nn.Module, int], None] | None = None,
                 accelerator: Accelerator | None = None):
        if (make_batch is None) == (collect is None):
            raise ValueError("give the trainer exactly one of make_batch (offline) and collect (on-policy)")
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.make_batch, self.collect, self.on_log, self.on_sample = make_batch, collect, on_log, on_sample
        process_state()  # before anything else asks: see process_state
        self.acc = acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                                    mixed_precision=cfg.mixed_precision)
        set_seed(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over all parameters (on CPU 4x faster than the per-tensor loop, ~6% of a
        # default training step; the same update up to rounding)
        opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        # The scheduler is stepped here, once per optimizer step, not through accelerate (which
        # would step it once per process).
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg))
        self.module, self.opt = acc.prepare(TrainModule(model, objective), opt)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        if cfg.compile:  # after the EMA copy: the shadow (sample grids, the saved model) stays eager
            compile_network(self.model)
        self.progress = _Progress()
        source = make_batch or collect
        stateful = getattr(source, "state_dict", None) and getattr(source, "load_state_dict", None)
        acc.register_for_checkpointing(self.sched, _PerRank(self.progress, acc), *([self.ema] if self.ema else []),
                                       *([_PerRank(source, acc)] if stateful else []))
        self._window = self._clock = (time.perf_counter(), 0)

    @property
    def history(self) -> list[dict]:
        """Every logged step of the run so far (restored with a checkpoint)."""
        return self.progress.history

    @property
    def model(self) -> torch.nn.Module:
        """The trained model, unwrapped (the optimised weights, not the EMA)."""
        return self.acc.unwrap_model(self.module).model

    def run(self, resume: bool = True) -> LoopResult:
        """Train to ``cfg.steps`` (from the newest checkpoint when ``resume``); the final state is
        checkpointed too."""
        resumed_from = None
        self._remove_partial_checkpoints()
        if resume and (ckpt := latest_checkpoint(self.out_dir)) is not None:
            self.acc.load_state(str(ckpt))
            resumed_from = self.progress.step
        self._window = self._clock = (time.perf_counter(), self.progress.seconds)
        self.module.train()
        while self.progress.step < self.cfg.steps:
            self.step()
        self.checkpoint()
        self.acc.wait_for_everyone()
        raw = self.model.eval()
        _network(raw)._compiled_call_impl = None  # what the caller gets is eager
        return LoopResult(self.ema.shadow if self.ema else raw, raw, self.history, self.progress.step,
                          resumed_from, self.progress.seconds)

    def step(self) -> None:
        """One optimizer step: ``grad_accum`` micro-steps, the update, then log / checkpoint / sample."""
        cfg, step = self.cfg, self.progress.step
        terms: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            rng, gen = step_randomness(cfg.seed, self.acc.process_index, step, micro)
            batch = self.next_batch(rng, gen)
            for k, v in self.forward_backward(batch, gen, sync=micro == cfg.grad_accum - 1).items():
                terms[k] = terms.get(k, 0.0) + v / cfg.grad_accum
        self.optimize()
        self.progress.step = done = step + 1
        self._window = (self._window[0], self._window[1] + cfg.batch_size * cfg.grad_accum * self.acc.num_processes)
        if done % cfg.log_every == 0 or done == cfg.steps:
            self.log(done, terms)
        # Samples before the checkpoint: a run killed between the two resumes from the previous
        # checkpoint and draws this step's samples again, instead of never drawing them.
        if self.on_sample and cfg.sample_every and done % cfg.sample_every == 0 and self.acc.is_main_process:
            with eager(self.model):  # the EMA shadow is eager anyway
                self.on_sample(self.ema.shadow if self.ema else self.model, done)
            self.module.train()
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            self.checkpoint()

    def next_batch(self, rng: np.random.Generator, gen: torch.Generator) -> Batch:
        """The micro-step's batch: drawn offline, or the next of the current collection (collected
        anew from the current weights when the last one is used up)."""
        if self.make_batch is not None:
            return self.make_batch(rng, gen)
        p = self.progress
        if p.used >= len(p.experience) * self.cfg.inner_epochs:
            p.experience, p.used = self._collect(), 0
        batch = p.experience[p.used % len(p.experience)]
        p.used += 1
        return batch

    def _collect(self) -> list[Batch]:
        rng, gen = collect_randomness(self.cfg.seed, self.acc.process_index, self.progress.step)
        model = self.model
        model.eval()
        with torch.no_grad(), eager(model):
            batches = list(self.collect(model, rng, gen))
        self.module.train()
        if not batches or len(batches) * self.cfg.inner_epochs % self.cfg.grad_accum:
            raise ValueError(f"collect returned {len(batches)} batch(es); with inner_epochs {self.cfg.inner_epochs} "
                             f"their passes must fill whole optimizer steps of grad_accum {self.cfg.grad_accum}")
        return batches

    def forward_backward(self, batch: Batch, gen: torch.Generator, sync: bool) -> dict[str, float]:
        """Loss and gradients of one micro-batch (gradients synchronised across processes only
        on the last micro-step); returns the loss and the objective's terms as floats."""
        with (nullcontext() if sync else self.acc.no_sync(self.module)), self.acc.autocast():
            loss, terms = self.module(batch, gen)
        self.acc.backward(loss / self.cfg.grad_accum)  # outside autocast, as torch advises; DDP decided in forward
        return {"loss": loss.detach().float().item(), **{k: float(v.detach().float()) for k, v in terms.items()}}

    def optimize(self) -> None:
        if self.cfg.max_grad_norm:
            self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model)

    def log(self, step: int, terms: dict[str, float]) -> None:
        """Average the step's terms over processes and record them with the LR and throughput."""
        names = list(terms)
        means = self.acc.reduce(torch.tensor([terms[k] for k in names]), reduction="mean").tolist()
        now = time.perf_counter()
        record = {"step": step, **dict(zip(names, means)), "local_loss": terms["loss"],
                  "lr": self.sched.get_last_lr()[0],
                  "samples_per_second": self._window[1] / max(now - self._window[0], 1e-9)}
        self._window = (now, 0)
        self.history.append(record)
        if self.on_log and self.acc.is_main_process:
            self.on_log(step, record)

    def _remove_partial_checkpoints(self) -> None:
        """A checkpoint a crash interrupted is still under its temporary name: never resumed, removed."""
        if self.acc.is_main_process:
            for partial in (self.out_dir / CHECKPOINTS).glob("step-*.tmp"):
                shutil.rmtree(partial, ignore_errors=True)
        self.acc.wait_for_everyone()

    def checkpoint(self) -> None:
        """Save the whole training state as ``step-NNNNNNN`` (written aside, renamed when whole)
        and prune all but the newest ``keep_checkpoints``."""
        acc, folder = self.acc, self.out_dir / CHECKPOINTS
        started, before = self._clock
        self.progress.seconds = before + time.perf_counter() - started
        target = folder / f"step-{self.progress.step:07d}"
        tmp = target.with_name(target.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            for old in complete_checkpoints(self.out_dir)[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
