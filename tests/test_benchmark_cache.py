"""The evaluate stage's per-generator cache (components/benchmark/cache.py): a generator is sampled
and scored again only when what its scores depend on changed; what comes from the cache is
exactly what a fresh benchmark computes."""
from __future__ import annotations

import numpy as np
import pytest

from components.benchmark import scoring
from components.benchmark.cache import ENTRY
from components.config import Params
from components.models.generator import SubjectGenerator
from components.models.sampling import SamplingSettings
from components.pipeline.project import default_params
from tests.conftest import TINY, TINY_JUDGES
from tests.test_pretrain import SMALL_GEN

GENERATORS = ["oracle", "noise", "pretrain", "sft"]


def _save_generator(folder, seed: int) -> None:
    SubjectGenerator.tiny(seed=seed, **SMALL_GEN).save_pretrained(folder)
    SamplingSettings(steps=2, guidance=2.0).save(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny benchmark, tiny judges and two tiny trained generators."""
    from components import judges as judges_stage
    from components.synthesize import SynthesizePaths
    from components.synthesize import run as synthesize

    root = tmp_path_factory.mktemp("bench")
    raw = default_params()
    raw["synthesize"].update({**TINY, "bench_per_subset": 2, "bench_rows": {}})
    raw["judges"].update(TINY_JUDGES)
    raw["evaluate"].update(generators=GENERATORS, compare=[["pretrain", "sft"]], bootstrap=100)
    raw["resources"]["workers"] = 1
    params = Params.model_validate(raw)
    synthesize(params, SynthesizePaths(out=root / "data", reports=root / "r"))
    judges_stage.run(params, judges_stage.JudgesPaths(data=root / "data", out=root / "judges", reports=root / "rj"))
    _save_generator(root / "models" / "pretrain", seed=0)
    _save_generator(root / "models" / "sft", seed=1)
    return root, params


def _run(root, params, monkeypatch, reports: str, cache=True):
    """The benchmark, and the generators it sampled."""
    sampled = []
    real = scoring.generate_all

    def spy(gen, rows, side, seed):
        sampled.append(getattr(gen, "name", None) or type(gen).__name__)
        return real(gen, rows, side, seed)

    monkeypatch.setattr(scoring, "generate_all", spy)
    m = scoring.benchmark(params, root / "data" / "bench", root / "judges", root / reports, models=root / "models",
                          cache=root / ".cache" if cache else None)
    monkeypatch.setattr(scoring, "generate_all", real)
    return m, sampled


def _scores(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "timings"}


def test_only_what_changed_is_sampled_again_and_the_cache_gives_what_a_fresh_run_computes(world, monkeypatch):
    root, params = world
    first, sampled = _run(root, params, monkeypatch, "r1")
    assert len(sampled) == len(GENERATORS)
    assert {k: v["cached"] for k, v in first["timings"].items()} == dict.fromkeys(GENERATORS, 0)

    again, sampled = _run(root, params, monkeypatch, "r2")
    assert sampled == []  # nothing changed: nothing drawn
    assert _scores(again) == _scores(first)
    assert {k: v["cached"] for k, v in again["timings"].items()} == dict.fromkeys(GENERATORS, 1)
    assert (root / "r2" / "scores.csv").read_bytes() == (root / "r1" / "scores.csv").read_bytes()
    assert (root / "r2" / "grid_sft.png").is_file()

    # Only sft changes (new weights): only sft is drawn; everyone else's scores are as before.
    _save_generator(root / "models" / "sft", seed=2)
    changed, sampled = _run(root, params, monkeypatch, "r3")
    assert len(sampled) == 1 and "sft" in sampled[0]
    for name in ("oracle", "noise", "pretrain"):
        assert changed[name] == first[name]
    assert changed["sft"] != first["sft"]
    # ... and what came from the cache is what a benchmark without a cache computes.
    fresh, sampled = _run(root, params, monkeypatch, "r4", cache=False)
    assert len(sampled) == len(GENERATORS)
    assert _scores(fresh) == _scores(changed)
    assert (root / "r4" / "scores.csv").read_bytes() == (root / "r3" / "scores.csv").read_bytes()
    # The superseded sft entry is pruned: one entry per generator.
    assert len([p for p in (root / ".cache").iterdir() if ENTRY.fullmatch(p.name)]) == len(GENERATORS)


def test_sampling_settings_judges_and_code_are_in_the_key(world, monkeypatch):
    root, params = world
    _run(root, params, monkeypatch, "s0")
    steps = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"sample_steps": 3})})
    _, sampled = _run(root, steps, monkeypatch, "s1")
    assert sorted(sampled) == ["pretrain", "sft"]  # the reference generators do not sample with steps
    threshold = params.model_copy(update={"judges": params.judges.model_copy(update={"grounding_threshold": 0.4})})
    _, sampled = _run(root, threshold, monkeypatch, "s2")
    assert len(sampled) == len(GENERATORS)  # other judges: every score is new

    from components.benchmark import cache

    monkeypatch.setattr(cache, "code_hash", lambda: "another commit")
    _, sampled = _run(root, params, monkeypatch, "s3")
    assert len(sampled) == len(GENERATORS)
    monkeypatch.undo()


def test_retrained_judges_with_the_same_params_rescore_everyone(world, monkeypatch):
    """The judges' files are in the key, not only their params: judges retrained on other data
    (same params) must score every generator again."""
    root, params = world
    _run(root, params, monkeypatch, "j0")
    weights = next(p for p in sorted((root / "judges" / "eval").rglob("*")) if p.is_file() and p.stat().st_size > 100)
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + bytes(4))
        _, sampled = _run(root, params, monkeypatch, "j1")
    finally:
        weights.write_bytes(original)
    assert len(sampled) == len(GENERATORS)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_entry_is_computed_again(world, monkeypatch, damage):
    root, params = world
    _run(root, params, monkeypatch, "c0")
    entries = sorted(p for p in (root / ".cache").iterdir() if ENTRY.fullmatch(p.name))
    images = entries[0] / "images.npy"
    if damage == "missing":
        images.unlink()
    else:
        images.write_bytes(images.read_bytes()[:200])
    _, sampled = _run(root, params, monkeypatch, "c1")
    assert len(sampled) == 1
    assert np.load(images).ndim == 4  # written again, whole
    (root / ".cache" / "notes.txt").write_text("not an entry")
    (root / ".cache" / ".0123.tmp-1-x").mkdir(exist_ok=True)
    _run(root, params, monkeypatch, "c2")
    assert (root / ".cache" / "notes.txt").is_file() and (root / ".cache" / ".0123.tmp-1-x").is_dir()
