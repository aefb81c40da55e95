"""PSR's RL stage pieces: rollouts with an SDE window (``rollout``), the on-policy collector
that samples, scores and normalises (``collect``), and the probe that watches the evaluation
judges and guards against reward hacking (``probe``). The objective is ``objectives/grpo.py``."""
