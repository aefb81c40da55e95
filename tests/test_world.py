import json

import numpy as np
import pytest

from components import world
from components.world import backgrounds
from components.world.scenes import (
    RELATIONS,
    choose_identities,
    relation_of,
    sample_single,
    sample_standardize,
    sample_task,
)

POOL = world.identity_pool("train", 0.1, "test-salt")
BENCH = world.identity_pool("bench", 0.1, "test-salt")


def _samples():
    rng = np.random.default_rng(7)
    out = [sample_task(rng, t, POOL) for t in world.TASKS for _ in range(6)]
    out += [sample_single(rng, POOL) for _ in range(6)] + [sample_standardize(rng, POOL, 0.5) for _ in range(6)]
    return out


def test_world_has_enough_categories_and_a_character():
    assert len(world.OBJECT_CATEGORIES) >= 8
    assert world.CHARACTER in world.CATEGORIES
    assert all(len(world.subjects.all_identities(c)) > 100 for c in world.CATEGORIES)


def test_same_seed_same_sample_and_pixels():
    for task in world.TASKS:
        a = sample_task(np.random.default_rng([3, 1]), task, POOL)
        b = sample_task(np.random.default_rng([3, 1]), task, POOL)
        assert a.prompt == b.prompt and a.target == b.target and a.refs == b.refs
        ra, rb = world.render(a.target), world.render(b.target)
        assert np.array_equal(ra.image, rb.image) and np.array_equal(ra.labels, rb.labels)
    c = sample_task(np.random.default_rng([3, 2]), "Three", POOL)
    assert c.target != sample_task(np.random.default_rng([3, 1]), "Three", POOL).target


def test_boxes_are_the_tight_boxes_of_the_masks():
    for s in _samples():
        r = world.render(s.target, 32, 32)
        assert set(np.unique(r.labels)) <= set(range(len(s.target.placements) + 1))
        for k, box in enumerate(r.boxes):
            ys, xs = np.nonzero(r.mask(k))
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= box[0] < box[2] <= 32 and 0 <= box[1] < box[3] <= 32


def test_mask_pixels_have_the_subjects_colours():
    ident = world.Identity("robot", ("red", "yellow"), "solid", "none")
    p = world.Placement(ident, 0.5, 0.5, "large", "upright", 0.6)
    r = world.render(world.Scene("plain", 0, (p,)), 32, 32)
    inside = r.image[r.mask(0)].astype(int)
    # most of a robot's area is its primary colour (red), none of it is the grey background
    red = (np.abs(inside - [220, 40, 40]).sum(axis=1) < 40).mean()
    grey = (np.abs(inside - [209, 209, 209]).sum(axis=1) < 10).mean()
    assert red > 0.5 and grey < 0.05


def test_prompts_name_subjects_by_category_and_image_index_only():
    for s in _samples():
        for k, p in enumerate(s.target.placements):
            assert f"{p.identity.category} from image {k + 1}" in s.prompt
        for ident in (p.identity for p in s.target.placements):
            for colour in ident.colors:
                assert f" {colour} " not in f" {s.prompt} "
        assert backgrounds.PHRASES[s.target.background] in s.prompt


def test_claims_agree_with_the_scene():
    for s in _samples():
        ps = s.target.placements
        for c in s.claims:
            if c["type"] == "size":
                assert ps[c["subject"]].size == c["value"] and c["value"] in s.prompt
            elif c["type"] == "action":
                assert ps[c["subject"]].action == c["value"] and c["value"] in s.prompt
            elif c["type"] == "relation":
                assert c["value"] in RELATIONS
                assert relation_of(ps[c["subject"]], ps[c["object"]]) == c["value"]
            elif c["type"] == "background":
                assert c["value"] == s.target.background
        assert len(s.refs) == len(ps)
        for ref, p in zip(s.refs, ps):
            assert ref.placements[0].identity == p.identity


def test_position_claims_are_unambiguous_in_pixels():
    rng = np.random.default_rng(11)
    for _ in range(30):
        s = sample_task(rng, "Position", POOL)
        r = world.render(s.target, 32, 32)
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = r.boxes
        rel = next(c["value"] for c in s.claims if c["type"] == "relation")
        ca, cb = ((ax0 + ax1) / 2, (ay0 + ay1) / 2), ((bx0 + bx1) / 2, (by0 + by1) / 2)
        delta = {"left of": cb[0] - ca[0], "right of": ca[0] - cb[0], "above": cb[1] - ca[1], "below": ca[1] - cb[1]}
        assert delta[rel] > 3, (rel, r.boxes)


def test_benchmark_identities_are_disjoint_from_training():
    for cat in world.CATEGORIES:
        train, bench = set(POOL[cat]), set(BENCH[cat])
        assert train and bench and not train & bench
        assert train | bench == set(world.subjects.all_identities(cat))
    assert all(world.is_heldout(i.id, 0.1, "test-salt") for c in BENCH for i in BENCH[c])


def test_standard_view_is_canonical_and_centred():
    rng = np.random.default_rng(5)
    for _ in range(6):
        s = sample_standardize(rng, POOL, 1.0)
        (p,) = s.target.placements
        assert s.target.background == "plain" and (p.cx, p.cy) == (0.5, 0.5)
        assert p.action == "standing" and p.pose == world.shapes.POSES["standing"]
        assert s.refs[0].placements[0].identity == p.identity


@pytest.mark.parametrize("h,w", [(32, 32), (48, 64), (128, 128)])
def test_renders_at_any_resolution(h, w):
    s = sample_task(np.random.default_rng(1), "Three", POOL)
    r = world.render(s.target, h, w)
    assert r.image.shape == (h, w, 3) and r.labels.shape == (h, w)
    assert all(b is not None for b in r.boxes)


def test_scene_round_trips_through_json():
    s = sample_task(np.random.default_rng(2), "Complex", POOL)
    again = world.Scene.from_dict(json.loads(json.dumps(s.target.to_dict())))
    assert again == s.target
    assert np.array_equal(world.render(again).image, world.render(s.target).image)


def test_same_placement_pairs_keep_the_subject_and_change_only_the_background():
    rng = np.random.default_rng(5)
    for _ in range(20):
        s = sample_single(rng, POOL, same_placement=1.0)
        (ref,) = s.refs
        assert s.subset == "single" and s.target.placements == ref.placements
        assert s.target.background != ref.background
        assert s.claims == [{"type": "present", "subject": 0, "category": ref.placements[0].identity.category},
                            {"type": "background", "value": s.target.background}]
        assert backgrounds.PHRASES[s.target.background] in s.prompt
        r = world.render(s.target)
        assert r.boxes[0] is not None
    # share 0 spends no random draw on the choice: the first draw still picks the identity, so
    # data made with 0 is the data made before the option existed
    for seed in range(10):
        (first,) = choose_identities(np.random.default_rng(seed), POOL, 1)
        assert sample_single(np.random.default_rng(seed), POOL, 0.0).refs[0].placements[0].identity == first
    rng = np.random.default_rng(1)
    mixed = [sample_single(rng, POOL, 0.5) for _ in range(200)]
    same = sum(m.target.placements == m.refs[0].placements for m in mixed)
    assert 70 <= same <= 130
