"""The judges: the models behind rewards and benchmark metrics (see base.py for the protocols)."""
from .base import AestheticJudge, Box, Grounder, Grounding, JudgeSet, SemanticJudge, SubjectEncoder, crop_subject, iou

__all__ = ["AestheticJudge", "Box", "Grounder", "Grounding", "JudgeSet", "SemanticJudge", "SubjectEncoder",
           "crop_subject", "iou"]
