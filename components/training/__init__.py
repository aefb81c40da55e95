"""Training: the one trainer (``loop``) and fitting a generator to a dataset with it (``fit``)."""
from .loop import EMA, LoopConfig, LoopResult, Trainer, latest_checkpoint, process_state, schedule, step_randomness

__all__ = ["EMA", "LoopConfig", "LoopResult", "Trainer", "latest_checkpoint", "process_state", "schedule",
           "step_randomness"]
