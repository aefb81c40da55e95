"""Fan-out on Dask: synthesis on a two-worker LocalCluster (127.0.0.1, started and stopped by the
call) writes byte-identical datasets, manifests included, to the local engine's."""
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
