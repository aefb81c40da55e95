import json

import numpy as np
import pytest

from components import world
from components.benchmark.generators import available, background_in, make_generator
from components.world import backgrounds


@pytest.fixture(scope="module")
def row():
    pool = world.identity_pool("bench", 0.1, "subjectflow-v1")
    s = world.sample_task(np.random.default_rng(4), "Position", pool)
    rendered = [world.render(r) for r in s.refs]
    refs = [r.image for r in rendered]
    return s, refs, {"scene": json.dumps(s.target.to_dict()), "ref_boxes": [r.boxes[0] for r in rendered]}


def test_reference_generators_are_registered():
    assert {"oracle", "copy_paste", "background_only", "noise"} <= set(available())
    with pytest.raises(KeyError, match="unknown generator"):
        make_generator("dalle")


@pytest.mark.parametrize("name", ["oracle", "copy_paste", "background_only", "noise"])
def test_every_generator_draws_an_image_of_the_asked_size(name, row):
    s, refs, meta = row
    img = make_generator(name).generate(s.prompt, refs, height=32, width=32, seed=3, meta=meta)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    again = make_generator(name).generate(s.prompt, refs, height=32, width=32, seed=3, meta=meta)
    assert np.array_equal(img, again)


def test_oracle_is_the_ground_truth_render(row):
    s, refs, meta = row
    img = make_generator("oracle").generate(s.prompt, refs, height=32, width=32, seed=0, meta=meta)
    assert np.array_equal(img, world.render(s.target).image)
    with pytest.raises(ValueError, match="needs the benchmark row"):
        make_generator("oracle").generate(s.prompt, refs, height=32, width=32, seed=0)


def test_background_is_read_from_the_prompt(row):
    s, refs, _ = row
    assert background_in(s.prompt) == s.target.background
    bg = make_generator("background_only").generate(s.prompt, refs, height=32, width=32, seed=1)
    expect = (backgrounds.draw(s.target.background, 1, 32, 32) * 255).round().astype(np.uint8)
    assert np.array_equal(bg, expect)


def test_copy_paste_pastes_each_reference_subject_unchanged(row):
    s, refs, meta = row
    img = make_generator("copy_paste").generate(s.prompt, refs, height=32, width=32, seed=1, meta=meta)
    for ref, (x0, y0, x1, y1) in zip(refs, meta["ref_boxes"]):
        subject = ref[y0:y1, x0:x1]
        h, w = subject.shape[:2]
        hits = [(i, j) for i in range(33 - h) for j in range(33 - w) if np.array_equal(img[i:i + h, j:j + w], subject)]
        assert hits, "the reference's subject is not in the output pixel for pixel"


def test_copy_paste_without_boxes_pastes_the_centres(row):
    s, refs, _ = row
    img = make_generator("copy_paste").generate(s.prompt, refs, height=32, width=32, seed=1)
    bg = make_generator("background_only").generate(s.prompt, refs, height=32, width=32, seed=1)
    assert not np.array_equal(img, bg)
    for ref in refs:
        centre = ref[14:18, 14:18].reshape(-1, 3)
        d = np.abs(img.reshape(-1, 1, 3).astype(int) - centre[None].astype(int)).sum(-1).min(0)
        assert np.median(d) < 10
