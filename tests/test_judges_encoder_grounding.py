"""The subject encoder and the grounding model on a tiny synthesized world: shapes, L2
normalisation, save/load round trips, seeded determinism, that a few steps of training lower the
loss, and that the grounder answers "not found" for a category that is not there."""
from __future__ import annotations

import numpy as np
import pytest

from components.config import JudgesParams
from components.judging import Grounder, SubjectEncoder, crop_subject
from components.judging.encoder import (
    PATCH,
    EncoderNet,
    LookAlikes,
    WorldEncoder,
    _patch_pair,
    evaluate_encoder,
    shuffle_subject,
    train_encoder,
)
from components.judging.grounding import GrounderNet, WorldGrounder, evaluate_grounder, train_grounder

# Tiny networks and few steps: the whole file must stay well under a minute on 2 cores.
CFG = JudgesParams(width=8, embed_dim=16, batch_size=16, encoder_steps=40, grounder_steps=150, lr=5e-3)
# The grounder must learn shapes before it can tell "there" from "not there": a bit wider, longer.
GROUNDER_CFG = CFG.model_copy(update={"width": 16, "grounder_steps": 300})


@pytest.fixture(scope="module")
def world(judge_world):
    return judge_world[1], judge_world[2]


@pytest.fixture(scope="module")
def encoder(world):
    return train_encoder(world[0], CFG, seed=3)


@pytest.fixture(scope="module")
def grounder(world):
    return train_grounder(world[0], GROUNDER_CFG, seed=3)


def _crops(data, n=6):
    return [crop_subject(data.scenes[t].image, data.scenes[t].subjects[k].box, CFG.crop_size)
            for t, k, _ in data.pairs[:n]]


def _unit_rows(x: np.ndarray) -> bool:
    return np.allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-5)


# --- encoder ----------------------------------------------------------------------------------

def test_encoder_shapes_and_normalisation(world):
    enc = WorldEncoder(EncoderNet(CFG.crop_size, CFG.width, CFG.embed_dim))
    assert isinstance(enc, SubjectEncoder)
    crops = _crops(world[1])
    emb, patches = enc.embed(crops), enc.patch_features(crops)
    g = CFG.crop_size // PATCH
    assert emb.shape == (len(crops), CFG.embed_dim) and emb.dtype == np.float32
    assert patches.shape == (len(crops), g * g, CFG.embed_dim) and patches.dtype == np.float32
    assert _unit_rows(emb) and _unit_rows(patches)
    # A crop of another size is resized, not rejected.
    big = crop_subject(world[1].scenes[0].image, world[1].scenes[0].subjects[0].box, 48)
    assert enc.embed([big]).shape == (1, CFG.embed_dim)
    assert enc.embed([]).shape == (0, CFG.embed_dim)


def test_same_crop_embeds_identically(world, encoder):
    enc, _ = encoder
    crop = _crops(world[1], 1)[0]
    a, b = enc.embed([crop, crop]), enc.embed([crop])
    assert np.array_equal(a[0], a[1]) and np.allclose(a[0], b[0], atol=1e-6)


def test_patch_pair_correspondence_is_exact():
    # On a noise image every patch is unique, so the claimed correspondence can be checked pixel
    # for pixel (a flipped view shows its patch mirrored).
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b, target = _patch_pair(img, (8, 8, 20, 20), rng, 32)
        g = 32 // PATCH
        assert (target >= 0).sum() >= (g - 1) ** 2
        for q in np.flatnonzero(target >= 0):
            (i, j), (ai, aj) = divmod(q, g), divmod(target[q], g)
            pb = b[i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH]
            pa = a[ai * PATCH:(ai + 1) * PATCH, aj * PATCH:(aj + 1) * PATCH]
            assert np.array_equal(pb, pa) or np.array_equal(pb, pa[:, ::-1])


def test_encoder_training_is_seeded(world):
    cfg = CFG.model_copy(update={"encoder_steps": 3})
    _, la = train_encoder(world[0], cfg, seed=5)
    _, lb = train_encoder(world[0], cfg, seed=5)
    _, lc = train_encoder(world[0], cfg, seed=6)
    assert la == lb and la != lc


def test_encoder_training_lowers_the_loss_and_evaluates(world, encoder):
    enc, losses = encoder
    assert len(losses) == CFG.encoder_steps and np.isfinite(losses).all()
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    m = evaluate_encoder(enc, world[1], n_candidates=8)
    assert set(m) >= {"retrieval_top1", "cos_pos", "cos_neg", "lookalike_acc", "cos_lookalike", "shuffle_acc",
                      "cos_shuffled"}
    assert 0 <= m["retrieval_top1"] <= 1 and m["cos_pos"] > m["cos_neg"]
    assert 0 <= m["shuffle_acc"] <= 1 and -1 <= m["cos_shuffled"] <= 1


def test_shuffled_subject_keeps_its_colours_not_its_shape():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = shuffle_subject(crop, rng)
    lo, hi = 5, 27  # the central 70%: round(32 * 0.15) = 5
    assert np.array_equal(out[:lo], crop[:lo]) and np.array_equal(out[hi:], crop[hi:])
    assert not np.array_equal(out[lo:hi, lo:hi], crop[lo:hi, lo:hi])
    key = lambda a: sorted(map(tuple, a.reshape(-1, 3)))  # noqa: E731
    assert key(out[lo:hi, lo:hi]) == key(crop[lo:hi, lo:hi])


def test_look_alikes_share_colours_and_differ_in_shape(world):
    data = world[0]
    looks = LookAlikes(data)
    rng = np.random.default_rng(0)
    found = 0
    for scene in data.scenes:
        for fact in scene.subjects:
            hit = looks.pick(fact.identity, rng)
            if hit is None:
                continue
            found += 1
            mine, other = fact.identity.split("|"), hit[2].split("|")
            assert mine[1:-2] == other[1:-2] and (mine[0], mine[-2]) != (other[0], other[-2])
            assert data.scenes[hit[0]].subjects[hit[1]].identity == hit[2]
    assert found > 0


def test_encoder_save_load_round_trip(world, encoder, tmp_path):
    enc, _ = encoder
    enc.save(tmp_path / "enc")
    assert (tmp_path / "enc" / "config.json").exists()
    back = WorldEncoder.load(tmp_path / "enc")
    crops = _crops(world[1])
    assert np.array_equal(enc.embed(crops), back.embed(crops))
    assert np.array_equal(enc.patch_features(crops), back.patch_features(crops))


# --- grounder ---------------------------------------------------------------------------------

def test_grounder_answers_one_grounding_per_query(world):
    g = WorldGrounder(GrounderNet(width=CFG.width))
    assert isinstance(g, Grounder)
    scenes = world[1].scenes[:5]
    out = g.ground([s.image for s in scenes], [s.subjects[0].category for s in scenes])
    assert len(out) == 5
    for r, s in zip(out, scenes):
        assert 0.0 <= r.score <= 1.0 and r.found == (r.score >= g.threshold)
        assert r.candidate is not None and r.box in (None, r.candidate)  # the top box, found or not
        if r.found:
            x0, y0, x1, y1 = r.box
            assert 0 <= x0 < x1 <= s.image.shape[1] and 0 <= y0 < y1 <= s.image.shape[0]
    assert g.ground([], []) == []
    with pytest.raises(KeyError):
        g.ground([scenes[0].image], ["dragon"])


def test_grounder_training_is_seeded(world):
    cfg = CFG.model_copy(update={"grounder_steps": 3})
    _, la = train_grounder(world[0], cfg, seed=5)
    _, lb = train_grounder(world[0], cfg, seed=5)
    assert la == lb


def test_grounder_learns_and_says_not_found_on_an_empty_image(world, grounder):
    g, losses = grounder
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    scenes = [s for s in world[1].scenes if len(s.subjects) == 1][:20]
    present, _ = g.scores([s.image for s in scenes], [s.subjects[0].category for s in scenes])
    plain = np.full_like(scenes[0].image, 209)  # the world's plain background, nothing on it
    cats = list(g.net.categories)
    empty, _ = g.scores([plain] * len(cats), cats)
    assert empty.max() < np.median(present)
    assert not any(r.found for r in g.ground([plain] * len(cats), cats))
    m = evaluate_grounder(g, world[1])
    assert {"mean_iou", "miss_rate", "fp_rate", "accuracy_iou50"} <= set(m) and 0 <= m["mean_iou"] <= 1


def test_grounder_save_load_round_trip(world, grounder, tmp_path):
    g, _ = grounder
    g.save(tmp_path / "gr")
    back = WorldGrounder.load(tmp_path / "gr")
    assert back.threshold == g.threshold and back.net.categories == g.net.categories
    scenes = world[1].scenes[:8]
    imgs, cats = [s.image for s in scenes], [s.subjects[0].category for s in scenes]
    assert g.ground(imgs, cats) == back.ground(imgs, cats)
    assert np.array_equal(g.scores(imgs, cats)[0], back.scores(imgs, cats)[0])
