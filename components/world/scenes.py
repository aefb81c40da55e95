"""Scene sampling and prompts, following PSR's task types.

A *sample* is a target scene, one reference scene per subject (the subject alone in another
context), a prompt and the list of claims that prompt makes. Prompts name subjects only by
category and reference index ("the cat from image 1"), never by appearance. What a prompt does
not claim takes its default (medium size, upright / standing), so a prompt determines the scene
up to positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backgrounds, shapes
from .render import CANONICAL_SIZE, SIZES, Placement, Scene
from .subjects import CATEGORIES, CHARACTER, OBJECT_CATEGORIES, Identity

TASKS = ("Attribute", "Action", "Background", "Position", "Complex", "Three", "Four")
N_SUBJECTS = {"Attribute": 2, "Action": 2, "Background": 2, "Position": 2, "Complex": 2, "Three": 3, "Four": 4}
RELATIONS = ("left of", "right of", "above", "below")
_RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
# Which facts each task's prompt states (besides presence of every subject and the background).
_CLAIMS = {
    "Attribute": ("size",), "Action": ("action",), "Background": (), "Position": ("relation",),
    "Complex": ("size", "action", "relation"), "Three": (), "Four": (), "single": (),
}


@dataclass
class Sample:
    subset: str
    prompt: str
    target: Scene
    refs: list[Scene]
    claims: list[dict]


def default_size(n_subjects: int) -> str:
    return "small" if n_subjects >= 4 else "medium"


def default_action(identity: Identity) -> str:
    return shapes.CANONICAL_POSE if identity.is_character else shapes.CANONICAL_ROTATION


def actions_for(identity: Identity) -> tuple[str, ...]:
    return tuple(shapes.POSES) if identity.is_character else tuple(shapes.ROTATIONS)


def _placement(rng, identity: Identity, cx: float, cy: float, size: str, action: str, exact=False) -> Placement:
    """Place ``identity``; sizes and angles are jittered around their words unless ``exact``."""
    def jitter(lo, hi, n=None):
        return np.zeros(n or 1) if exact else rng.uniform(lo, hi, n or 1)

    scale = SIZES[size] * (1.0 + float(jitter(-0.04, 0.04)[0]))
    if identity.is_character:
        pose = tuple(float(a + d) for a, d in zip(shapes.POSES[action], jitter(-8, 8, 4)))
        return Placement(identity, cx, cy, size, action, scale, 0.0, pose)
    rotation = float(shapes.ROTATIONS[action] + jitter(-6, 6)[0])
    return Placement(identity, cx, cy, size, action, scale, rotation, None)


def _relation_positions(rng, scales, relation: str):
    """Centres of subjects 0 and 1 with subject 0 clearly ``relation`` subject 1: separated
    along the relation's axis by at least the sum of their half-sizes, and offset across it by
    less than half that separation."""
    s0, s1 = scales[:2]
    need = 0.5 * (s0 + s1)
    lo0, hi0, lo1, hi1 = s0 / 2, 1 - s0 / 2, s1 / 2, 1 - s1 / 2
    # Sample "first" (left / top) then "second" (right / bottom) along the axis.
    first_lo, first_hi = lo0, min(hi0, hi1 - need)
    if first_hi < first_lo:
        raise RuntimeError(f"subjects of scales {scales[:2]} cannot stand {relation} one another")
    a0 = rng.uniform(first_lo, first_hi)
    a1 = rng.uniform(max(lo1, a0 + need), hi1)
    gap = a1 - a0
    c0 = rng.uniform(max(lo0, lo1), min(hi0, hi1))
    c1 = float(np.clip(c0 + rng.uniform(-0.45, 0.45) * gap, lo1, hi1))
    if relation in ("right of", "below"):
        a0, a1 = 1 - a0, 1 - a1  # mirror: subject 0 ends up right of / below subject 1
        a0, a1 = float(np.clip(a0, lo0, hi0)), float(np.clip(a1, lo1, hi1))
    if relation in ("left of", "right of"):
        return [(a0, c0), (a1, c1)]
    return [(c0, a0), (c1, a1)]


def _positions(rng, scales, relation: str | None = None, tries: int = 2000):
    """Centres for subjects of the given scales: inside the frame, overlapping little, and with
    subject 0 clearly ``relation`` subject 1 when a relation is asked for."""
    def apart(pts):
        return all(np.hypot(pts[i][0] - pts[j][0], pts[i][1] - pts[j][1]) >= 0.5 * (scales[i] + scales[j])
                   for i in range(len(pts)) for j in range(i))

    for _ in range(tries):
        pts = _relation_positions(rng, scales, relation) if relation else []
        pts += [(rng.uniform(s / 2, 1 - s / 2), rng.uniform(s / 2, 1 - s / 2)) for s in scales[len(pts):]]
        if apart(pts):
            return pts
    raise RuntimeError(f"could not place {len(scales)} subjects of scales {scales} (relation={relation})")


def relation_of(a: Placement, b: Placement) -> str:
    """The spatial relation of subject a to subject b, by the larger axis of separation."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def reference_scene(rng, identity: Identity) -> Scene:
    """The subject alone in a random context: another background, a random action, a
    medium or large size, near the centre."""
    size = str(rng.choice(["medium", "large"]))
    action = str(rng.choice(actions_for(identity)))
    s = SIZES[size]
    cx, cy = (float(np.clip(0.5 + rng.uniform(-0.12, 0.12), s / 2, 1 - s / 2)) for _ in range(2))
    bg = str(rng.choice(backgrounds.SCENE_BACKGROUNDS))
    return Scene(bg, int(rng.integers(2**31)), (_placement(rng, identity, cx, cy, size, action),))


def choose_identities(rng, pool: dict[str, tuple[Identity, ...]], n: int, categories=CATEGORIES) -> list[Identity]:
    """n identities of n different categories, so that a category names one subject."""
    cats = rng.choice(np.array(categories), size=n, replace=False)
    return [pool[c][int(rng.integers(len(pool[c])))] for c in cats]


def _phrase(k: int, p: Placement, claims: tuple[str, ...]) -> str:
    cat = p.identity.category
    text = f"a {p.size} {cat} from image {k + 1}" if "size" in claims else f"the {cat} from image {k + 1}"
    if "action" in claims:
        text += f" {p.action}"
    return text


def compose(subset: str, target: Scene, refs: list[Scene]) -> Sample:
    """Write the prompt and the claims list for a target scene of task ``subset``."""
    claimed = _CLAIMS[subset]
    ps = target.placements
    claims: list[dict] = [{"type": "present", "subject": k, "category": p.identity.category} for k, p in enumerate(ps)]
    for k, p in enumerate(ps):
        if "size" in claimed:
            claims.append({"type": "size", "subject": k, "value": p.size})
        if "action" in claimed:
            claims.append({"type": "action", "subject": k, "value": p.action})
    bg_phrase = backgrounds.PHRASES[target.background]
    phrases = [_phrase(k, p, claimed) for k, p in enumerate(ps)]
    if "relation" in claimed:
        rel = relation_of(ps[0], ps[1])
        claims.append({"type": "relation", "subject": 0, "object": 1, "value": rel})
        body = f"{phrases[0]} {_RELATION_PHRASE[rel]} {phrases[1]}"
        if len(phrases) > 2:
            body += ", with " + " and ".join(phrases[2:])
        prompt = f"{body}, {bg_phrase}"
    else:
        joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        prompt = f"{joined}, {bg_phrase}" if "action" in claimed else f"{joined} {bg_phrase}"
    claims.append({"type": "background", "value": target.background})
    return Sample(subset, prompt, target, refs, claims)


def sample_task(rng, task: str, pool: dict[str, tuple[Identity, ...]]) -> Sample:
    """A multi-subject sample of PSR task ``task`` with identities drawn from ``pool`` (a pool
    may lack categories: the subjects come from those it has)."""
    n = N_SUBJECTS[task]
    claimed = _CLAIMS[task]
    idents = choose_identities(rng, pool, n, tuple(c for c in CATEGORIES if pool.get(c)))
    relation = str(rng.choice(RELATIONS)) if "relation" in claimed else None
    sizes = [default_size(n)] * n
    if "size" in claimed:
        # Subjects must fit side by side (along the relation, when one is claimed).
        room = 0.92 if relation else (1.0 if n == 2 else 0.8)
        allowed = [s for s in SIZES if n <= 2 or s != "large"]
        while True:
            sizes = [str(rng.choice(allowed)) for _ in idents]
            if sum(SIZES[s] for s in sizes) <= room * (n / 2 if n > 2 else 1):
                break
    actions = [str(rng.choice(actions_for(i))) if "action" in claimed else default_action(i) for i in idents]
    pts = _positions(rng, [SIZES[s] for s in sizes], relation)
    placements = tuple(_placement(rng, i, x, y, s, a) for i, (x, y), s, a in zip(idents, pts, sizes, actions))
    target = Scene(str(rng.choice(backgrounds.SCENE_BACKGROUNDS)), int(rng.integers(2**31)), placements)
    refs = [reference_scene(rng, i) for i in idents]
    return compose(task, target, refs)


def sample_single(rng, pool: dict[str, tuple[Identity, ...]], same_placement: float = 0.0) -> Sample:
    """Single-subject personalization: a reference in one context, the target in another,
    stating background and either size or action. With probability ``same_placement`` the
    target keeps the reference's placement (pose, size and place) and only the background
    changes: a re-contextualisation pair, which teaches the model to copy a subject before it
    has to move and re-pose it (no random draw is spent on the choice when it is 0)."""
    same = same_placement > 0 and rng.random() < same_placement
    (ident,) = choose_identities(rng, pool, 1)
    if same:
        kind, ref = "Background", reference_scene(rng, ident)
        others = [b for b in backgrounds.SCENE_BACKGROUNDS if b != ref.background]
        target = Scene(str(rng.choice(others)), int(rng.integers(2**31)), ref.placements)
    else:
        kind = str(rng.choice(["Background", "Attribute", "Action"]))
        size = str(rng.choice(list(SIZES))) if kind == "Attribute" else default_size(1)
        action = str(rng.choice(actions_for(ident))) if kind == "Action" else default_action(ident)
        (pt,) = _positions(rng, [SIZES[size]])
        target = Scene(str(rng.choice(backgrounds.SCENE_BACKGROUNDS)), int(rng.integers(2**31)),
                       (_placement(rng, ident, pt[0], pt[1], size, action),))
        ref = reference_scene(rng, ident)
    sample = compose(kind, target, [ref])
    sample.subset = "single"
    return sample


def standard_view(identity: Identity) -> Scene:
    """SerialGen's standardized view: canonical pose, front-facing, centred, large, plain
    background. It is a pure function of the identity."""
    p = _placement(None, identity, 0.5, 0.5, CANONICAL_SIZE, default_action(identity), exact=True)
    return Scene(backgrounds.PLAIN, 0, (p,))


def sample_standardize(rng, pool: dict[str, tuple[Identity, ...]], character_fraction: float) -> Sample:
    """A subject in a random pose, size, place and background → its standardized view."""
    cats = (CHARACTER,) if rng.random() < character_fraction else OBJECT_CATEGORIES
    (ident,) = choose_identities(rng, pool, 1, cats)
    size = str(rng.choice(list(SIZES)))
    (pt,) = _positions(rng, [SIZES[size]])
    source = Scene(str(rng.choice(backgrounds.SCENE_BACKGROUNDS)), int(rng.integers(2**31)),
                   (_placement(rng, ident, pt[0], pt[1], size, str(rng.choice(actions_for(ident)))),))
    target = standard_view(ident)
    prompt = (f"the {ident.category} from image 1 standardized: {CANONICAL_SIZE}, {default_action(ident)}, "
              f"front view, centred, {backgrounds.PHRASES['plain']}")
    claims = [{"type": "present", "subject": 0, "category": ident.category},
              {"type": "action", "subject": 0, "value": default_action(ident)},
              {"type": "size", "subject": 0, "value": CANONICAL_SIZE},
              {"type": "background", "value": backgrounds.PLAIN}]
    return Sample("standardize", prompt, target, [source], claims)


# Backgrounds with many details (trees, buildings, stars, flowers): the wild references' clutter.
BUSY_BACKGROUNDS = ("forest", "city", "night", "meadow")


def wild_reference_scene(rng, identity: Identity) -> Scene:
    """The subject as a user might photograph it: small, off-centre, in an unusual pose (the
    person in any pose but the canonical one) or rotated (an object never upright), on a busy
    background. SerialGen's case for standardizing the reference first."""
    s = SIZES["small"]
    offset = lambda: float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.5 - s / 2 - 0.02))  # noqa: E731
    cx, cy = 0.5 + offset(), 0.5 + offset()
    action = str(rng.choice([a for a in actions_for(identity) if a != default_action(identity)]))
    return Scene(str(rng.choice(BUSY_BACKGROUNDS)), int(rng.integers(2**31)),
                 (_placement(rng, identity, cx, cy, "small", action),))


def with_wild_references(rng, sample: Sample) -> Sample:
    """``sample`` (a benchmark row) with every reference redrawn wild: same target and prompt."""
    refs = [wild_reference_scene(rng, p.identity) for p in sample.target.placements]
    return Sample(sample.subset, sample.prompt, sample.target, refs, sample.claims)


def serial_sample(identity_rng, prompt_rng, pool: dict[str, tuple[Identity, ...]], category: str) -> Sample:
    """One row of a series (SerialGen's serial consistency): the identity and its one wild
    reference come from ``identity_rng`` (the same for every row of the series), the
    single-subject prompt and target from ``prompt_rng``."""
    (ident,) = choose_identities(identity_rng, pool, 1, (category,))
    ref = wild_reference_scene(identity_rng, ident)
    kind = str(prompt_rng.choice(["Background", "Attribute", "Action"]))
    size = str(prompt_rng.choice(list(SIZES))) if kind == "Attribute" else default_size(1)
    action = str(prompt_rng.choice(actions_for(ident))) if kind == "Action" else default_action(ident)
    (pt,) = _positions(prompt_rng, [SIZES[size]])
    target = Scene(str(prompt_rng.choice(backgrounds.SCENE_BACKGROUNDS)), int(prompt_rng.integers(2**31)),
                   (_placement(prompt_rng, ident, pt[0], pt[1], size, action),))
    sample = compose(kind, target, [ref])
    sample.subset = "serial"
    return sample
