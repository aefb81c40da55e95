"""Each reward pinned on hand-made inputs, with transparent stand-in judges: a grounder and a
semantic judge that read the world's ground truth, and a colour-histogram encoder."""
from __future__ import annotations

import numpy as np
import pytest

from components import world
from components.judging.base import Grounding, JudgeSet
from components.judging.rewards import PSR_WEIGHTS, available, make_reward
from components.world.render import Placement, Scene

CAT_RED = world.Identity("cat", ("red", "yellow"), "solid", "none")
STAR_BLUE = world.Identity("star", ("blue", "white"), "solid", "none")


class Truth:
    """Ground truth of every image rendered through it, keyed by pixel content."""

    def __init__(self):
        self.facts: dict[bytes, dict] = {}

    def render(self, scene: Scene) -> np.ndarray:
        r = world.render(scene, 32, 32)
        self.facts[r.image.tobytes()] = {
            "background": scene.background,
            "subjects": {p.identity.category: (box, p.size, p.action) for p, box in zip(scene.placements, r.boxes)},
        }
        return r.image


class TruthGrounder:
    def __init__(self, truth: Truth):
        self.truth = truth

    def ground(self, images, categories):
        out = []
        for img, cat in zip(images, categories):
            hit = self.truth.facts.get(img.tobytes(), {}).get("subjects", {}).get(cat)
            out.append(Grounding(hit[0], 1.0) if hit else Grounding(None, 0.0))
        return out


class TruthSemantic:
    def __init__(self, truth: Truth):
        self.truth = truth

    def background(self, images):
        return [self.truth.facts[i.tobytes()]["background"] for i in images]

    def describe(self, images, boxes, categories):
        out = []
        for img, cat in zip(images, categories):
            _, size, action = self.truth.facts[img.tobytes()]["subjects"][cat]
            out.append({"size": size, "action": action})
        return out


class HistogramEncoder:
    """Colour histogram of the crop: same colours -> cosine 1, other colours -> low."""

    def embed(self, crops):
        feats = []
        for c in crops:
            q = (np.asarray(c) // 64).reshape(-1, 3).astype(int)
            h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float32)
            h[np.argmax(h)] = 0  # drop the dominant (background) colour
            feats.append(h / (np.linalg.norm(h) + 1e-8))
        return np.stack(feats)

    def patch_features(self, crops):
        return self.embed(crops)[:, None, :]


class ConstantAesthetic:
    def score(self, images):
        return np.array([float(np.asarray(i).std() > 0) for i in images], np.float32)


@pytest.fixture
def setup():
    truth = Truth()
    judges = JudgeSet(HistogramEncoder(), TruthGrounder(truth), TruthSemantic(truth), ConstantAesthetic())
    # References on the output's background and in its pose, so a faithful output crop matches
    # its reference crop up to resampling (the histogram encoder sees background pixels too).
    refs = [truth.render(Scene("snow", 1, (Placement(CAT_RED, 0.5, 0.5, "medium", "upright", 0.4),))),
            truth.render(Scene("snow", 2, (Placement(STAR_BLUE, 0.5, 0.5, "medium", "upright", 0.4),)))]
    claims = [{"type": "present", "subject": 0, "category": "cat"}, {"type": "present", "subject": 1, "category": "star"},
              {"type": "relation", "subject": 0, "object": 1, "value": "left of"},
              {"type": "background", "value": "snow"}]
    meta = {"refs": refs, "categories": ["cat", "star"], "claims": claims}
    return truth, judges, meta


def _scene(cat_identity, star_identity, background="snow", cat_x=0.25, star_x=0.75):
    return Scene(background, 3, (Placement(cat_identity, cat_x, 0.5, "medium", "upright", 0.4),
                                 Placement(star_identity, star_x, 0.5, "medium", "upright", 0.4)))


def test_registry_has_the_psr_rewards():
    assert {"psr", "confusion", "semantic", "aesthetic", "mix"} <= set(available())
    with pytest.raises(KeyError, match="unknown reward"):
        make_reward("nope", None)


def test_identical_subjects_score_high_and_swapped_score_low_with_high_confusion(setup):
    truth, judges, meta = setup
    good = truth.render(_scene(CAT_RED, STAR_BLUE))
    swapped_cat = world.Identity("cat", ("blue", "white"), "solid", "none")   # the star's colours
    swapped_star = world.Identity("star", ("red", "yellow"), "solid", "none")  # the cat's colours
    swapped = truth.render(_scene(swapped_cat, swapped_star))
    out = make_reward("psr", judges)([good, swapped], ["p", "p"], [meta, meta])
    assert out.scores[0] > 0.9
    assert out.scores[1] < 0.5
    assert out.info["confusion"][1] > 0.8 > out.info["confusion"][0]
    assert list(out.info["missing"]) == [0, 0]
    conf = make_reward("confusion", judges)([good, swapped], ["p", "p"], [meta, meta])
    assert conf.scores[1] > conf.scores[0]


def test_a_missing_subject_is_reported_not_hidden(setup):
    truth, judges, meta = setup
    only_cat = truth.render(Scene("snow", 3, (Placement(CAT_RED, 0.25, 0.5, "medium", "upright", 0.4),)))
    out = make_reward("psr", judges)([only_cat], ["p"], [meta])
    assert out.info["missing"][0] == 1
    # the cat still counts, the star scores 0: the mean is half of a perfect score at most
    assert 0.3 < out.scores[0] <= 0.5 + 1e-6


class DimGrounder:
    """The truth grounder, except that a star beside another subject (in an output, not in its
    reference) is seen at a quarter of confidence: below the threshold (0.5), with its true
    box as the candidate."""

    threshold = 0.5

    def __init__(self, truth: Truth):
        self.truth, self.inner = truth, TruthGrounder(truth)

    def ground(self, images, categories):
        out = self.inner.ground(images, categories)
        crowded = [len(self.truth.facts[im.tobytes()]["subjects"]) > 1 for im in images]
        return [Grounding(None, 0.25, g.box) if c == "star" and g.found and many else g
                for g, c, many in zip(out, categories, crowded)]


def test_graded_misses_give_a_missed_subject_its_similarity_times_confidence(setup):
    truth, judges, meta = setup
    dim = JudgeSet(judges.encoder, DimGrounder(truth), judges.semantic, judges.aesthetic)
    good = truth.render(_scene(CAT_RED, STAR_BLUE))
    exact = make_reward("psr", judges)([good], ["p"], [meta])
    zero = make_reward("psr", dim)([good], ["p"], [meta])
    graded = make_reward("psr", dim, misses="graded")([good], ["p"], [meta])
    cat, star = 2 * zero.scores[0], 2 * exact.scores[0] - 2 * zero.scores[0]  # the two subjects' cosines
    assert star > 0.9
    assert graded.scores[0] == pytest.approx((cat + 0.5 * star) / 2, rel=1e-5)  # confidence 0.25 / threshold 0.5
    assert zero.scores[0] < graded.scores[0] < exact.scores[0]
    assert list(zero.info["missing"]) == list(graded.info["missing"]) == [1]  # a miss is still counted
    with pytest.raises(ValueError, match="misses"):
        make_reward("psr", dim, misses="half")


def test_semantic_reward_is_the_fraction_of_claims_that_hold(setup):
    truth, judges, meta = setup
    reward = make_reward("semantic", judges)
    good = truth.render(_scene(CAT_RED, STAR_BLUE))
    wrong_bg = truth.render(_scene(CAT_RED, STAR_BLUE, background="desert"))
    wrong_side = truth.render(_scene(CAT_RED, STAR_BLUE, cat_x=0.75, star_x=0.25))
    out = reward([good, wrong_bg, wrong_side], ["p"] * 3, [meta] * 3)
    assert list(out.scores) == [1.0, 0.75, 0.75]
    assert out.info["background"][1] == 0.0 and out.info["relation"][2] == 0.0
    only_cat = truth.render(Scene("snow", 3, (Placement(CAT_RED, 0.25, 0.5, "medium", "upright", 0.4),)))
    missing = reward([only_cat], ["p"], [meta])
    assert missing.scores[0] == 0.5 and missing.info["present"][0] == 0.5  # star absent, so no relation


def test_mix_uses_psr_weights(setup):
    truth, judges, meta = setup
    good = truth.render(_scene(CAT_RED, STAR_BLUE))
    out = make_reward("mix", judges)([good], ["p"], [meta])
    parts = {k: make_reward(k, judges)([good], ["p"], [meta]).scores[0] for k in PSR_WEIGHTS}
    assert out.scores[0] == pytest.approx(sum(PSR_WEIGHTS[k] * parts[k] for k in PSR_WEIGHTS), rel=1e-5)
    assert PSR_WEIGHTS == {"psr": 0.4, "semantic": 0.4, "aesthetic": 0.2}


class OrderAesthetic:
    """Calibrated-looking scores (about -1..+1): smoother images score higher."""

    def score(self, images):
        return np.array([1 - np.asarray(i, np.float32).std() / 40 for i in images], np.float32)


def test_aesthetic_reward_keeps_the_judges_order_in_0_1(setup):
    truth, _, meta = setup
    judges = JudgeSet(HistogramEncoder(), TruthGrounder(truth), TruthSemantic(truth), OrderAesthetic())
    clean = truth.render(_scene(CAT_RED, STAR_BLUE))
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 40, clean.shape), 0, 255).astype(np.uint8)
    flat = np.full_like(clean, 128)
    out = make_reward("aesthetic", judges)([noisy, clean, flat], ["p"] * 3, [meta] * 3)
    assert ((out.scores > 0) & (out.scores < 1)).all()
    assert out.scores[0] < out.scores[1] < out.scores[2]
    assert np.array_equal(np.argsort(out.scores), np.argsort(out.info["raw"]))
