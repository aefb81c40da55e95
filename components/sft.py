"""sft stage: multi-subject supervised fine-tuning (PSR's second step).

Starts from the pretrained single-subject generator (``models/pretrain``) and trains it with the
shared loop on the bootstrapped pairs (``data/multisubject``), so that one sequence carries 2, 3
or 4 references. Each batch has one reference count, drawn with ``sft.ref_count_probs``; count 1
means a batch of single-subject pairs (``data/single``) replayed, so that the model keeps
practising the task it started with while it learns several references from few bootstrapped
pairs.
With ``sft.standardize_refs`` (SerialGen's stage II) every reference is first standardized by the
frozen ``models/standardizer``, and the model folder carries it (``standardizer/``), so whatever
samples the model standardizes the references the same way.
Output: a ``save_pretrained`` generator folder (``models/sft``) whose ``sampling.json`` records the
reference layout of its data (see ``models/layout.py``), loss history and sample grids.
"""
from __future__ import annotations

from .config import Params
from .pipeline.stage import stage_main
from .training.sft import SftPaths, run_sft

__all__ = ["SftPaths", "main", "run"]


def run(params: Params, paths: SftPaths) -> dict:
    """Fine-tune ``paths.init`` on the multi-subject pairs in ``paths.data``."""
    return run_sft(params, paths)


def main(argv=None) -> int:
    return stage_main("sft", run, SftPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
