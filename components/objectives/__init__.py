"""Training objectives, apart from the model: each is a small module whose pure loss can be
tested on hand-made tensors, and whose ``forward(model, batch, generator)`` returns the loss and
a dict of named terms the trainer logs. Flow matching trains pretrain and sft; the RL (Flow-GRPO)
and PatchDPO objectives sit next to it."""
from .base import Objective, TrainModule
from .flow_matching import FlowMatching, FlowMatchingBatch, condition_dropout, flow_matching_loss

__all__ = ["FlowMatching", "FlowMatchingBatch", "Objective", "TrainModule", "condition_dropout",
           "flow_matching_loss"]
