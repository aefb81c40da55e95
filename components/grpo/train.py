"""The RL stage's run: the policy and its reference, the rewards, the collector and the probe,
handed to the shared trainer; then the output the guard chooses (``components/rl.py`` is the
stage's command)."""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import Params
from ..data.rows import load_rows
from ..io import atomic_dir, folder_hash
from ..judging.rewards import make_reward, remember_references
from ..judging.sets import load_judge_set
from ..models.generator import SubjectGenerator
from ..models.sampling import SamplingSettings
from ..objectives.grpo import AdapterReference, AdvantageWeightedFM, FlowGRPO, FrozenReference
from ..pipeline.tracking import StepLogger
from ..training.fit import checkpoint_folder, data_digest, fingerprint
from ..training.loop import LoopConfig, Trainer, process_state
from .collect import Collector, RLRows, RolloutSettings
from .probe import Probe
from .report import summarise, write_reports

RL_ADAPTER = "rl"


def split_probe(rows: RLRows, n: int, seed: int) -> tuple[RLRows, RLRows]:
    """``n`` rows held out for the probe (never trained on) and the rest, by a seeded draw."""
    if n >= len(rows.prompts):
        raise ValueError(f"rl.probe_rows {n} leaves no training rows of {len(rows.prompts)}")
    probe = set(np.random.default_rng(seed).choice(len(rows.prompts), size=n, replace=False).tolist())
    return (rows.take([i for i in range(len(rows.prompts)) if i not in probe]), rows.take(sorted(probe)))


def attach_rl_adapter(model: SubjectGenerator, rank: int, seed: int) -> AdapterReference:
    """A fresh trainable LoRA adapter ``rl`` on the transformer's attention projections, over
    whatever adapters it has, frozen (the real profile's SFT adapter; none in the tiny profile).
    The KL's reference is the same network with ``rl`` switched off: no second copy."""
    import torch
    from peft import LoraConfig

    from ..models.flux import LORA_TARGETS

    below = list(getattr(model.transformer, "peft_config", {}))
    torch.manual_seed(seed)
    model.transformer.requires_grad_(False)
    # zero-initialised B (peft's default init): the policy starts exactly at the SFT model
    with warnings.catch_warnings():  # "multiple adapters": the SFT one below is meant to stay
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        model.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS),
                                      adapter_name=RL_ADAPTER)
    active = [*below, RL_ADAPTER]
    model.transformer.set_adapters(active)
    for name, p in model.transformer.named_parameters():  # after set_adapters, which makes them all trainable
        p.requires_grad_(f".{RL_ADAPTER}." in name)
    return AdapterReference(active, below)


@dataclass
class RLSetup:
    """Everything the trainer is handed: the policy, its collector and probe, the objective, the
    loop's configuration, and the sampling settings the model is saved with."""

    model: SubjectGenerator
    sampling: SamplingSettings
    collector: Collector
    probe: Probe
    objective: FlowGRPO | AdvantageWeightedFM
    loop: LoopConfig


def build_rl(params: Params, paths, logger: StepLogger | None = None) -> RLSetup:
    """The RL stage's pieces for ``paths`` (data, init, judges), logging to ``logger``."""
    cfg, train = params.rl, params.training
    logger = logger or StepLogger()
    rows = load_rows(paths.data)
    train_rows, probe_rows = split_probe(rows, cfg.probe_rows, cfg.seed)
    model = SubjectGenerator.from_pretrained(paths.init)
    sampling = SamplingSettings.load(paths.init)
    for frozen in (model.text_encoder, model.text_encoder_2):  # rollouts store the prompts' encodings
        if frozen is not None:
            frozen.requires_grad_(False)
    if cfg.lora_rank or model.config.base:  # the real profile is always trained through an adapter
        reference = attach_rl_adapter(model, cfg.lora_rank or params.generator.lora_rank, cfg.seed)
    else:  # the tiny profile's whole transformer: the reference is a frozen copy
        reference = FrozenReference(model) if cfg.beta > 0 else None
    trained = {n for n, p in model.named_parameters() if p.requires_grad}

    judges = load_judge_set(paths.judges / cfg.judge_set, params.judges)
    eval_judges = load_judge_set(paths.judges / "eval", params.judges)
    crop = {"crop_size": params.judges.crop_size}
    reward_fns = {n: make_reward(n, judges, **(crop if n in ("psr", "confusion") else {}),
                                 **({"misses": cfg.psr_misses} if n == "psr" else {})) for n in cfg.rewards}
    eval_fns = {n: make_reward(n, eval_judges, **(crop if n == "psr" else {})) for n in ("psr", "semantic", "aesthetic")}
    # Every reference grounded and embedded once, in one fixed pass: a resumed run's rewards are
    # then bit for bit those of an uninterrupted run (see rewards.remember_references).
    remember_references(judges, train_rows.meta + probe_rows.meta, params.judges.crop_size)
    remember_references(eval_judges, probe_rows.meta, params.judges.crop_size)

    settings = RolloutSettings(cfg.group_size, cfg.groups_per_batch, cfg.batches, cfg.rollout_steps, cfg.window_size,
                               tuple(cfg.window_range), cfg.eta,
                               sampling.guidance if cfg.rollout_guidance is None else cfg.rollout_guidance,
                               "bf16" if train.mixed_precision == "bf16" else "fp32", cfg.advantage,
                               cfg.advantage_scale)

    def log_iteration(step, record):
        logger.metrics({k: v for k, v in record.items() if k not in ("step",)}, step, prefix="rl/")
        print(f"rl iteration {record['iteration']}: reward {record['reward']:.4f} (std {record['reward_std']:.4f}) "
              + " ".join(f"{n} {record[f'{n}_mean']:.3f}" for n in cfg.rewards)
              + f" groups kept {record['groups_kept']:.2f} sampling {record['seconds_sampling']:.1f}s "
              f"scoring {record['seconds_scoring']:.1f}s", flush=True)

    def log_probe(step, record):
        logger.metrics({k: v for k, v in record.items() if k != "step"}, step, prefix="probe/")
        print(f"rl probe step {step}: reward judges {record['reward_judges/mix']:.4f}, eval judges "
              f"SC {record['eval_judges/SC']:.4f} SA {record['eval_judges/SA']:.4f} AES {record['eval_judges/AES']:.4f} "
              f"(mix {record['eval_judges/mix']:.4f})", flush=True)

    collector = Collector(train_rows, reward_fns, dict(cfg.rewards), dict(cfg.ref_count_probs), settings,
                          cfg.steps_per_iteration, log=log_iteration)
    probe = Probe(probe_rows, sampling, reward_fns, dict(cfg.rewards), eval_fns, cfg.guard_threshold, trained,
                  seed=cfg.seed, log=log_probe)
    collector.probe = probe
    objective = FlowGRPO(cfg.clip_range, cfg.adv_clip, cfg.beta, reference) if cfg.objective == "flow_grpo" else \
        AdvantageWeightedFM(cfg.adv_clip, cfg.beta, reference)
    loop = LoopConfig(steps=cfg.steps, batch_size=cfg.group_size * cfg.groups_per_batch, lr=cfg.lr,
                      warmup_steps=cfg.warmup_steps, weight_decay=train.weight_decay, grad_accum=cfg.grad_accum,
                      inner_epochs=cfg.inner_epochs, mixed_precision=train.mixed_precision,
                      max_grad_norm=train.max_grad_norm, ema_decay=cfg.ema_decay, checkpoint_every=cfg.checkpoint_every,
                      log_every=1, sample_every=cfg.probe_every, seed=cfg.seed)
    return RLSetup(model, sampling, collector, probe, objective, loop)


def run_rl(params: Params, paths) -> dict:
    """Flow-GRPO from ``paths.init`` on the prompts and references of ``paths.data``."""
    cfg = params.rl
    logger = StepLogger()
    setup = build_rl(params, paths, logger)
    model, sampling, collector, probe = setup.model, setup.sampling, setup.collector, setup.probe

    def on_sample(m, step):
        collector.seconds_elsewhere += probe(m, step)["seconds_probe"]

    def log_train(step, record):
        logger.metrics({k: v for k, v in record.items() if k not in ("step", "local_loss")}, step, prefix="train/")

    fp = fingerprint("rl", cfg.model_dump(), params.training.model_dump(), params.judges.model_dump(),
                     data_digest(paths.data), folder_hash(paths.init), folder_hash(paths.judges))
    checkpoints = checkpoint_folder(paths.checkpoints, "rl", fp)
    probe(model, 0)  # the SFT model, before any step: the probe's baseline
    result = Trainer(model, setup.objective, setup.loop, checkpoints, collect=collector, on_log=log_train,
                     on_sample=on_sample).run()
    if cfg.steps % cfg.probe_every:  # the end is always probed
        on_sample(result.model, cfg.steps)
    final, chosen = result.model, choose_output(cfg.output, probe, cfg.steps)
    if chosen != cfg.steps:
        final.load_state_dict(probe.best["state"], strict=False)
    metrics = summarise(collector, probe, result, chosen, cfg)
    if not process_state().is_main_process:
        return metrics
    if probe.flagged_at is not None:
        logger.tag("rl.reward_hacking", f"flagged at step {probe.flagged_at}; output step {chosen}")
    write_reports(paths.reports, collector, probe, result, chosen, metrics)
    with atomic_dir(paths.out) as tmp:
        save_policy(final, tmp)
        sampling.save(tmp)
    shutil.rmtree(checkpoints, ignore_errors=True)  # done: a rerun must start afresh
    return {**metrics, "sampling": asdict(sampling)}


def choose_output(rule: str, probe: Probe, last: int) -> int:
    """The step whose EMA the stage saves (``rl.output``)."""
    if rule == "last" or probe.best is None:
        return last
    if rule == "best" or probe.flagged_at is not None:
        return int(probe.best["step"])
    return last


def save_policy(model: SubjectGenerator, folder: Path) -> None:
    """The policy as a generator folder. The real profile's adapters (SFT's, RL's) are saved as one
    adapter of their summed rank, which is the same update (``save_merged_lora``); the tiny
    profile's RL adapter is merged into the weights, so the folder is a plain generator."""
    if RL_ADAPTER not in getattr(model.transformer, "peft_config", {}):
        model.save_pretrained(folder)
    elif model.config.base:
        from ..models.flux import save_merged_lora

        save_merged_lora(model, folder, list(model.transformer.peft_config))
    else:
        merged_copy(model).save_pretrained(folder)


def merged_copy(model: SubjectGenerator) -> SubjectGenerator:
    """A copy of ``model`` with its active LoRA adapters merged into the weights and removed."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(model)
    names = dict(out.transformer.named_modules())
    for name, module in list(names.items()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(names[parent] if parent else out.transformer, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(out.transformer, attr):
            delattr(out.transformer, attr)
    return out
