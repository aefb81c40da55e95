"""sft_std stage: SerialGen's stage II beside PSR's SFT, for the benchmark to compare them.

The same multi-subject SFT as the ``sft`` stage (its data, settings and starting weights), with
every reference first standardized by the frozen ``models/standardizer``, whatever
``sft.standardize_refs`` says: the model folder carries the standardizer, so the benchmark, the
registry and ``subjectflow generate`` standardize its references the same way. The benchmark's
``[sft, sft_std]`` comparison, on the standard and the wild-reference rows and on serial
consistency, shows when standardizing helps.
"""
from __future__ import annotations

from .config import Params
from .pipeline.stage import stage_main
from .training.sft import SftPaths, run_sft


def run(params: Params, paths: SftPaths) -> dict:
    """SFT of ``paths.init`` on standardized references."""
    return run_sft(params, paths, name="sft_std", standardize=True)


def main(argv=None) -> int:
    return stage_main("sft_std", run, SftPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
