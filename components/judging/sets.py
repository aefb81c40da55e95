"""Loading a judge set from the judges stage's output, or real pretrained models by id/path."""
from __future__ import annotations

from pathlib import Path

from ..config import JudgesParams
from .base import JudgeSet
from .memo import MemoEncoder, MemoGrounder


def load_judge_set(folder: str | Path, cfg: JudgesParams) -> JudgeSet:
    """The judges saved in ``folder`` (encoder/, grounder/, semantic/, aesthetic/); the encoder
    and grounder are replaced by pretrained models when params name them. The encoder and the
    grounder remember their answers (``memo.py``): nothing is grounded or embedded twice."""
    from .aesthetic import WorldAestheticJudge
    from .encoder import WorldEncoder
    from .grounding import WorldGrounder
    from .semantic import WorldSemanticJudge

    folder = Path(folder)
    if cfg.encoder_model or cfg.grounder_model:
        from . import adapters
    encoder = adapters.load_encoder(cfg.encoder_model) if cfg.encoder_model else WorldEncoder.load(folder / "encoder")
    grounder = (adapters.load_grounder(cfg.grounder_model) if cfg.grounder_model
                else WorldGrounder.load(folder / "grounder"))
    return JudgeSet(MemoEncoder(encoder), MemoGrounder(grounder), WorldSemanticJudge.load(folder / "semantic"),
                    WorldAestheticJudge.load(folder / "aesthetic"))
