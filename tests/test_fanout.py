"""Fan-out on Dask: synthesis on a two-worker LocalCluster (127.0.0.1) writes byte-identical
datasets, manifests included, to the local engine's; bootstrapping's regenerations and the
benchmark's generators sent to the cluster give the same images and scores as in-process."""
from __future__ import annotations

from components import synthesize
from components.config import Params
from components.data.manifest import SPLITS
from components.fanout import fan_out
from components.synthesize import SynthesizePaths
from tests.conftest import tiny_params


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthesis_on_a_two_worker_dask_cluster_is_byte_identical(tmp_path):
    outs = {}
    for engine, workers in (("local", 1), ("dask", 2)):
        params = Params.model_validate({**tiny_params(), "resources": {"workers": workers, "engine": engine}})
        paths = SynthesizePaths(out=tmp_path / engine / "data", reports=tmp_path / engine / "reports")
        metrics = synthesize.run(params, paths)
        assert metrics["engine"] == engine and metrics["workers"] == workers
        outs[engine] = {split: _files(paths.out / split) for split in SPLITS}
    for split in SPLITS:
        assert outs["dask"][split].keys() == outs["local"][split].keys() and len(outs["local"][split]) > 10
        assert outs["dask"][split] == outs["local"][split], split


def _square(x):
    return x * x


def test_fan_out_keeps_job_order_on_every_engine():
    jobs = list(range(20))
    for resources in ({"workers": 1}, {"workers": 2}, {"workers": 2, "engine": "dask"}):
        cfg = Params.model_validate({"resources": resources}).resources
        assert list(fan_out(_square, jobs, cfg)) == [j * j for j in jobs]


def test_regenerations_on_a_dask_cluster_are_the_ones_drawn_in_process(tmp_path):
    import numpy as np

    from components.bootstrap.redraw import regenerate
    from components.models.generator import SubjectGenerator
    from tests.test_pretrain import SMALL_GEN

    folder = tmp_path / "pretrain"
    SubjectGenerator.tiny(**SMALL_GEN, seed=0).save_pretrained(folder)
    model = SubjectGenerator.from_pretrained(folder).eval()
    side = model.config.resolution
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(5)]
    prompts = [f"a cat in a {b}" for b in ("forest", "desert", "city", "beach", "forest")]
    args = (model, inputs, prompts, 2, 2, 2.0, 7)
    here = regenerate(*args)
    cluster = Params.model_validate({"resources": {"workers": 2, "engine": "dask"}}).resources
    there = regenerate(*args, fan=(cluster, folder))
    assert len(here) == len(there) == 5
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a, b)


def test_the_benchmark_on_a_dask_cluster_scores_as_in_process(tmp_path):
    import pandas as pd

    from components import judges as judges_stage
    from components.benchmark import scoring
    from components.models.generator import SubjectGenerator
    from components.models.sampling import SamplingSettings
    from tests.conftest import TINY, TINY_JUDGES
    from tests.test_pretrain import SMALL_GEN

    raw = tiny_params()
    raw["synthesize"].update({**TINY, "bench_per_subset": 1, "bench_rows": {}})
    raw["judges"].update(TINY_JUDGES)
    raw["evaluate"].update(generators=["noise", "copy_paste", "sft"], compare=[], bootstrap=100)
    params = Params.model_validate(raw)
    synthesize.run(params, SynthesizePaths(out=tmp_path / "data", reports=tmp_path / "r"))
    judges_stage.run(params, judges_stage.JudgesPaths(data=tmp_path / "data", out=tmp_path / "judges",
                                                      reports=tmp_path / "rj"))
    SubjectGenerator.tiny(**SMALL_GEN, seed=1).save_pretrained(tmp_path / "models" / "sft")
    SamplingSettings(steps=2, guidance=2.0).save(tmp_path / "models" / "sft")
    scores = {}
    for engine, workers in (("local", 1), ("dask", 2)):
        p = params.model_copy(update={"resources": params.resources.model_copy(update={"engine": engine,
                                                                                        "workers": workers})})
        scoring.benchmark(p, tmp_path / "data" / "bench", tmp_path / "judges", tmp_path / engine,
                          models=tmp_path / "models")
        scores[engine] = pd.read_csv(tmp_path / engine / "scores.csv")
    assert len(scores["local"]) == 3 * 7
    pd.testing.assert_frame_equal(scores["dask"], scores["local"])
