import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components import synthesize, world
from components.config import Params
from components.data import synthesis
from components.data.manifest import COLUMNS, SPLITS, TRAIN_SPLITS, read_manifest
from components.synthesize import SynthesizePaths
from components.world.scenes import BUSY_BACKGROUNDS, default_action
from tests.conftest import tiny_params


def _run(tmp_path, workers):
    params = Params.model_validate({**tiny_params(), "resources": {"workers": workers}})
    paths = SynthesizePaths(out=tmp_path / "data", reports=tmp_path / "reports")
    return params, paths, synthesize.run(params, paths)


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.png")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("w1"), 1)


def test_writes_every_dataset_with_its_manifest_and_grid(one_worker):
    params, paths, metrics = one_worker
    cfg = params.synthesize
    for split in SPLITS:
        m = read_manifest(paths.out / split)
        assert list(m.columns) == list(COLUMNS)
        assert m["id"].is_unique
        expected = {"bench": sum(map(cfg.bench_size, world.TASKS)), "wild": sum(map(cfg.wild_size, world.TASKS)),
                    "serial": cfg.serial_identities * cfg.serial_prompts}.get(split) or getattr(cfg, split)
        assert len(m) == metrics[split]["samples"] == expected
        for rec in m.itertuples():
            for rel in [rec.target, rec.mask, *rec.refs]:
                with Image.open(paths.out / split / rel) as im:
                    assert im.size == (cfg.resolution, cfg.resolution)
            assert len(rec.refs) == len(rec.boxes) == len(rec.categories) == rec.n_subjects
            labels = np.asarray(Image.open(paths.out / split / rec.mask))
            for k, (x0, y0, x1, y1) in enumerate(rec.boxes):
                ys, xs = np.nonzero(labels == k + 1)
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert (paths.reports / f"grid_{split}.png").exists()
    bench = read_manifest(paths.out / "bench")
    assert bench["subset"].value_counts().to_dict() == {t: cfg.bench_size(t) for t in world.TASKS}


def test_wild_rows_are_benchmark_rows_with_their_references_redrawn_wild(one_worker):
    """Same ids' targets, prompts and identities as the benchmark's first rows per subset; each
    reference small, off-centre, never in the canonical pose, on a busy background."""
    _, paths, _ = one_worker
    bench = read_manifest(paths.out / "bench").set_index("id")
    wild = read_manifest(paths.out / "wild")
    assert len(wild) and set(wild.subset) == set(world.TASKS)
    for rec in wild.itertuples():
        twin = bench.loc[rec.id.replace("wild-", "bench-")]
        assert (rec.prompt, rec.scene, list(rec.identities)) == (twin.prompt, twin.scene, list(twin.identities))
        assert rec.claims == twin.claims
        for desc in rec.ref_scenes:
            scene = world.Scene.from_dict(json.loads(desc))
            (p,) = scene.placements
            assert scene.background in BUSY_BACKGROUNDS and p.size == "small"
            assert p.action != default_action(p.identity) and max(abs(p.cx - 0.5), abs(p.cy - 0.5)) >= 0.15


def test_a_series_is_one_heldout_identity_with_one_reference_and_several_prompts(one_worker):
    params, paths, _ = one_worker
    serial = read_manifest(paths.out / "serial")
    bench_pool = {i.id for ids in world.identity_pool("bench", params.synthesize.heldout_fraction,
                                                      params.synthesize.identity_salt).values() for i in ids}
    series = serial.groupby(serial.id.str.rsplit("-", n=1).str[0])
    assert series.ngroups == params.synthesize.serial_identities
    for _, rows in series:
        assert len(rows) == params.synthesize.serial_prompts and rows.prompt.nunique() > 1
        assert {tuple(i) for i in rows.identities} == {tuple(rows.identities.iloc[0])}
        assert rows.identities.iloc[0][0] in bench_pool
        first = [(paths.out / "serial" / r[0]).read_bytes() for r in rows.refs]
        assert all(f == first[0] for f in first)  # one reference image for the whole series


def test_benchmark_identities_never_in_training(one_worker):
    params, paths, _ = one_worker
    bench = {i for ids in read_manifest(paths.out / "bench")["identities"] for i in ids}
    for split in TRAIN_SPLITS:
        train = {i for ids in read_manifest(paths.out / split)["identities"] for i in ids}
        assert train and not train & bench


def test_scene_json_re_renders_the_target(one_worker):
    import json

    params, paths, _ = one_worker
    rec = read_manifest(paths.out / "multi").iloc[3]
    scene = world.Scene.from_dict(json.loads(rec["scene"]))
    again = world.render(scene, params.synthesize.resolution, params.synthesize.resolution)
    saved = np.asarray(Image.open(paths.out / "multi" / rec["target"]))
    assert np.array_equal(again.image, saved)


def test_output_does_not_depend_on_worker_count(one_worker, tmp_path):
    _, paths1, _ = one_worker
    _, paths2, m2 = _run(tmp_path, 2)
    assert m2["workers"] == 2
    for split in SPLITS:
        a, b = read_manifest(paths1.out / split), read_manifest(paths2.out / split)
        pd.testing.assert_frame_equal(a, b)
        assert _digest(paths1.out / split) == _digest(paths2.out / split)


def test_a_crash_leaves_no_half_written_dataset(tmp_path, monkeypatch):
    params = Params.model_validate(tiny_params())
    calls = {"n": 0}
    real = synthesis.write_sample

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(synthesis, "write_sample", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesis.synthesize_split(params.synthesize, "single", tmp_path / "single", params.resources)
    assert not (tmp_path / "single").exists()
    assert list(tmp_path.iterdir()) == []
