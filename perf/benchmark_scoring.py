"""Benchmark scoring throughput: batched scoring against one image at a time, and judges that
remember their answers against judges that do not.

    python perf/benchmark_scoring.py [--per-subset 20] [--judges models/judges/eval]

Scores oracle images of the benchmark (7 subsets x --per-subset rows) on all three dimensions
(SC, SA, AES) with a judge set: the trained one at --judges (default models/judges/eval, what
the pipeline trained), else a set of default-architecture judges trained briefly here. Trained,
not random, weights matter: how many subjects the grounder finds sets how many crops are
embedded and described. Prints images per second both ways, measured in the same run, and their
ratio. Then scores the images of the four reference generators one generator after the other, as
the evaluate stage does, with the judges alone and with ``judging/memo.py``'s memory (what
``load_judge_set`` gives: each output grounded once for SC and SA, each reference grounded and
embedded once for all generators), and prints both times and their ratio. The first comparison
uses the judges alone, so the memory does not answer the second pass.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from components.benchmark.generators import make_generator
from components.benchmark.scoring import generate_all, load_bench, score
from components.config import Params
from components.judging.base import JudgeSet
from components.judging.memo import MemoEncoder, MemoGrounder
from components.pipeline.project import default_params
from components.synthesize import SynthesizePaths
from components.synthesize import run as synthesize


def _judges(params: Params, folder: Path, data: Path):
    """The judges alone (without the memory load_judge_set adds)."""
    from components.judging.sets import load_judge_set

    if (folder / "aesthetic").is_dir():
        print(f"judges: {folder}")
        j = load_judge_set(folder, params.judges)
        return JudgeSet(j.encoder.inner, j.grounder.inner, j.semantic, j.aesthetic)
    from components.judges import JUDGES
    from components.judging import data as judge_data

    print(f"judges: none at {folder}; training a default-architecture set for 150 steps each")
    cfg = params.judges.model_copy(update={f"{j}_steps": 150 for j in JUDGES})
    train = judge_data.load([data / "multi"])
    models = {name: fit(train, cfg, 0)[0] for name, (fit, _) in JUDGES.items()}
    return JudgeSet(models["encoder"], models["grounder"], models["semantic"], models["aesthetic"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-subset", type=int, default=20)
    ap.add_argument("--judges", type=Path, default=Path("models/judges/eval"), help="a trained judge set folder")
    args = ap.parse_args()
    raw = default_params()
    raw["synthesize"].update(single=2, standardize=2, multi=400, bench_per_subset=args.per_subset, bench_rows={})
    raw["resources"]["workers"] = 1
    params = Params.model_validate(raw)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(params, SynthesizePaths(out=Path(tmp) / "data", reports=Path(tmp) / "r"))
        rows, side = load_bench(Path(tmp) / "data" / "bench")
        judges = _judges(params, args.judges, Path(tmp) / "data")
    images = generate_all(make_generator("oracle"), rows, side, 0)
    crop = params.judges.crop_size
    score(rows[:4], images[:4], judges, crop)  # warm-up: first calls pay for allocation
    t0 = time.perf_counter()
    batched = score(rows, images, judges, crop)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r, img in zip(rows, images):
        score([r], [img], judges, crop)
    t_single = time.perf_counter() - t0
    n = len(rows)
    print(f"benchmark scoring of {n} images ({side}px, SC+SA+AES, {batched['n_subjects'].sum()} subjects)")
    print(f"  batched         : {n / t_batched:8.1f} images/s")
    print(f"  one at a time   : {n / t_single:8.1f} images/s")
    print(f"  ratio batched / one-at-a-time = {t_single / t_batched:.2f}")

    names = ["oracle", "copy_paste", "background_only", "noise"]
    per_gen = [generate_all(make_generator(name), rows, side, 0) for name in names]

    def evaluate_pattern(j) -> float:
        t0 = time.perf_counter()
        for imgs in per_gen:
            score(rows, imgs, j, crop)
        return time.perf_counter() - t0

    plain, remembered = [], []
    for _ in range(2):  # alternated, best of two: the machines are noisy
        plain.append(evaluate_pattern(judges))
        remembered.append(evaluate_pattern(JudgeSet(MemoEncoder(judges.encoder), MemoGrounder(judges.grounder),
                                                    judges.semantic, judges.aesthetic)))
    print(f"scoring {len(names)} generators' images in turn ({', '.join(names)}), {n} rows each")
    print(f"  judges alone    : {min(plain):8.2f} s")
    print(f"  with the memory : {min(remembered):8.2f} s")
    print(f"  ratio alone / with the memory = {min(plain) / min(remembered):.2f}")


if __name__ == "__main__":
    main()
