"""The data quality gate's per-row checks: what a manifest row claims, checked against its files
and against itself. Each check gives "ok" or the first problem it finds, one short line naming
the file or entry and the offending value; the gate (``gate.py``) puts the checks in columns and
expects "ok" of each, so a failure is reported with the row's id and that line.

- files: every path resolves inside the dataset folder and names a file there; decoded (each PNG
  once), the target and the references are RGB and the mask a single-channel label map (L or P,
  as synthesis writes it), all at the stated size, the mask holding only labels 0..n_subjects and
  each subject's label spanning exactly its box;
- text: scene, claims and every ref_scenes entry parse and agree with the row's subjects,
  background and references; the prompt names exactly images 1..n_refs;
- leakage, on training data: no benchmark identity in the scene or in a reference's provenance,
  no reference drawn from a benchmark sample, no target or reference a byte copy of a benchmark
  image (paths into the benchmark's folder already fail the first rule)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
from PIL import Image

from ..world import Scene
from ..world.scenes import relation_of
from .manifest import read_manifest

OK = "ok"
RGB = ("RGB",)
LABEL_MODES = ("L", "P")  # synthesis saves the uint8 label map as L; a palette PNG holds the same indices
CHECK_COLUMNS = ("target_status", "mask_status", "refs_status", "boxes_status", "scene_status", "ref_scenes_status",
                 "claims_status", "prompt_status", "leak_status")
_IMAGE_K = re.compile(r"\bimage (\d+)\b")  # how prompts name a reference: "the cat from image 2"
_SUBJECT_CLAIMS = ("present", "size", "action", "relation")


@dataclass(frozen=True)
class Benchmark:
    """What no training dataset may hold: the benchmark's identities, its sample ids and the
    sha256 of each of its targets and references (mapped to that file)."""

    identities: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    images: dict[str, str] = field(default_factory=dict)


def _items(v) -> list:
    """A list cell as a list ([] when missing or not a list)."""
    return [] if v is None or isinstance(v, (str, bytes, float, int)) else list(v)


def _int(v) -> int | None:
    return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_benchmark(bench_dir: Path) -> Benchmark:
    """The benchmark dataset in ``bench_dir`` as a :class:`Benchmark`. A file it cannot read is
    skipped: the gate's own run on the benchmark reports it."""
    m = read_manifest(bench_dir)
    root = os.path.realpath(bench_dir)
    identities = {str(i) for ids in m.get("identities", []) for i in _items(ids)}
    images = {}
    for rel in chain(m.get("target", []), *(_items(r) for r in m.get("refs", []))):
        path, status = locate(root, rel)
        if status == OK:
            with open(path, "rb") as f:
                images[sha256(f.read())] = f"{Path(bench_dir).name}/{rel}"
    return Benchmark(frozenset(identities), frozenset(str(i) for i in m.get("id", [])), images)


# ---- files -------------------------------------------------------------------------------------

def locate(root: str, rel) -> tuple[str | None, str]:
    """(its path, "ok") if the manifest path ``rel`` names a file inside the dataset folder
    ``root`` (a resolved path); else (None, why not). Symlinks are followed, so a link out of
    the folder is outside too."""
    if not isinstance(rel, str) or not rel:
        return None, "no path"
    if os.path.isabs(rel):
        return None, f"{rel} is absolute; manifest paths are relative to the dataset folder"
    path = os.path.realpath(os.path.join(root, rel))
    if not path.startswith(root + os.sep):
        return None, f"{rel} resolves outside the dataset folder"
    if not os.path.isfile(path):
        return None, f"{rel} missing"
    return path, OK


def open_image(root: str, rel, decode: bool) -> tuple[str, bytes | None, Image.Image | None]:
    """("ok", the file's bytes, the decoded image) for a PNG inside the dataset; without
    ``decode`` only its place and existence are checked (bytes and image None). Else (why not,
    None, None)."""
    path, status = locate(root, rel)
    if status != OK or not decode:
        return status, None, None
    with open(path, "rb") as f:  # read only: validation never writes data
        data = f.read()
    try:
        im = Image.open(io.BytesIO(data))
        im.load()  # the header alone says nothing about a truncated pixel stream
    except Exception as e:  # noqa: BLE001 - any decoder error means the file is unusable
        return f"{rel} undecodable ({type(e).__name__})", None, None
    return OK, data, im


def picture_status(rel: str, im: Image.Image, width, height, modes: tuple[str, ...]) -> str:
    """The decoded ``im`` is ``width`` x ``height`` in one of ``modes``."""
    if im.size != (width, height):
        return f"{rel} is {im.size[0]}x{im.size[1]}, stated {width}x{height}"
    if im.mode not in modes:
        return f"{rel} is mode {im.mode}, expected {' or '.join(modes)}"
    return OK


def label_status(rel: str, labels: np.ndarray, n_subjects: int | None) -> str:
    """A label map holds only 0 (background) and k+1 for subject k < n_subjects."""
    top = int(labels.max()) if labels.size else 0
    if n_subjects is not None and top > n_subjects:
        return f"{rel} holds label {top}, n_subjects={n_subjects}"
    return OK


def boxes_status(labels: np.ndarray, boxes) -> str:
    """Each stated target box is the tight box of its subject's label (exclusive ends), as the
    renderer computed it. Malformed boxes are left to the subjects frame's bounds checks."""
    for k, box in enumerate(_items(boxes)):
        try:
            stated = tuple(int(v) for v in box)
        except (TypeError, ValueError):
            continue
        ys, xs = np.nonzero(labels == k + 1)
        span = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None
        if span != stated:
            return f"boxes[{k}]={list(stated)}, the mask's label {k + 1} spans {list(span) if span else 'nothing'}"
    return OK


# ---- text --------------------------------------------------------------------------------------

def parse(text) -> tuple[object, str]:
    """(the parsed JSON, "ok") or (None, why not)."""
    if not isinstance(text, str):
        return None, f"not a JSON string ({type(text).__name__})"
    try:
        return json.loads(text), OK
    except ValueError as e:
        return None, f"invalid JSON ({e})"


def scene_status(rec: dict) -> tuple[str, Scene | None]:
    """The scene re-renders the row: it parses as a world Scene whose background and subjects
    (in order) are the row's. Also returns the scene when it parses."""
    d, status = parse(rec["scene"])
    if status != OK:
        return status, None
    try:
        scene = Scene.from_dict(d)
    except Exception as e:  # noqa: BLE001 - whatever breaks the parser breaks re-rendering
        return f"not a scene ({type(e).__name__}: {e})", None
    n, idents = _int(rec["n_subjects"]), _items(rec["identities"])
    if n is not None and len(scene.placements) != n:
        return f"{len(scene.placements)} subject(s), n_subjects={n}", scene
    if scene.background != rec["background"]:
        return f"background {scene.background!r}, the row's is {rec['background']!r}", scene
    for k, p in enumerate(scene.placements):
        if k < len(idents) and p.identity.id != idents[k]:
            return f"subject {k} is {p.identity.id!r}, identities[{k}]={idents[k]!r}", scene
    return OK, scene


def ref_scenes_status(rec: dict) -> tuple[str, list]:
    """Every ref_scenes entry parses to a JSON object that is either the scene the reference was
    rendered from (one subject: the row's subject k) or a bootstrapped reference's provenance
    (naming its ``source`` sample). Also returns the entries (None where one does not parse)."""
    texts, idents = _items(rec["ref_scenes"]), _items(rec["identities"])
    parsed = [parse(t) for t in texts]
    entries = [d if isinstance(d, dict) else None for d, _ in parsed]
    for k, (d, status) in enumerate(parsed):
        if status != OK:
            return f"entry {k}: {status}", entries
        if not isinstance(d, dict):
            return f"entry {k}: not a JSON object", entries
        if "placements" in d:
            try:
                shown = [p.identity.id for p in Scene.from_dict(d).placements]
            except Exception as e:  # noqa: BLE001
                return f"entry {k}: not a scene ({type(e).__name__}: {e})", entries
            if len(shown) != 1 or (k < len(idents) and shown[0] != idents[k]):
                return f"entry {k} shows {shown}, identities[{k}]={idents[k] if k < len(idents) else None!r}", entries
        elif "source" not in d:
            return f"entry {k}: neither a scene (placements) nor a provenance (source)", entries
    return OK, entries


def claims_status(rec: dict, scene: Scene | None) -> str:
    """The claims parse to a list of typed claims about the row's subjects: one "present" claim
    per subject with its category, the row's background, and sizes, actions and relations as
    the scene (when it parses) has them."""
    claims, status = parse(rec["claims"])
    if status != OK:
        return status
    if not isinstance(claims, list) or not all(isinstance(c, dict) and isinstance(c.get("type"), str) for c in claims):
        return "not a list of claims (objects with a type)"
    n, cats = _int(rec["n_subjects"]), _items(rec["categories"])
    ps = scene.placements if scene is not None and len(scene.placements) == n else None
    present = []
    for i, c in enumerate(claims):
        t = c["type"]
        if (t in _SUBJECT_CLAIMS and "subject" not in c) or (t == "relation" and "object" not in c):
            return f"claim {i} ({t}) names no {'subject' if 'subject' not in c else 'object'}"
        for role in ("subject", "object"):
            if role in c and not (_int(c[role]) is not None and n is not None and 0 <= c[role] < n):
                return f"claim {i} ({t}) names {role} {c[role]!r}, n_subjects={n}"
        k = c.get("subject")
        if t == "present":
            present.append(k)
            if k < len(cats) and c.get("category") != cats[k]:
                return f"claim {i} says subject {k} is a {c.get('category')!r}, categories[{k}]={cats[k]!r}"
        elif t == "background" and c.get("value") != rec["background"]:
            return f"claim {i} says background {c.get('value')!r}, the row's is {rec['background']!r}"
        elif t in ("size", "action", "relation") and ps is not None:
            actual = relation_of(ps[k], ps[c["object"]]) if t == "relation" else getattr(ps[k], t)
            if c.get("value") != actual:
                return f"claim {i} says subject {k}'s {t} is {c.get('value')!r}, the scene's is {actual!r}"
    if n is not None and sorted(present) != list(range(n)):
        return f"present claims name subjects {sorted(present)}, n_subjects={n}"
    return OK


def prompt_status(rec: dict) -> str:
    """The prompt names exactly images 1..n_refs ("image k" is reference k)."""
    if not isinstance(rec["prompt"], str):
        return "no prompt"
    named = sorted({int(k) for k in _IMAGE_K.findall(rec["prompt"])})
    n = len(_items(rec["refs"]))
    if any(not 1 <= k <= n for k in named):
        return f"names image {next(k for k in named if not 1 <= k <= n)}, the row has {n} reference(s)"
    if len(named) != n:
        return f"never names image {next(k for k in range(1, n + 1) if k not in named)} of its {n} reference(s)"
    return OK


# ---- leakage -----------------------------------------------------------------------------------

def _named_identities(d) -> list:
    """The identities (strings) a scene or provenance object names."""
    if not isinstance(d, dict):
        return []
    found = [d.get("identity")] + [p.get("identity") for p in _items(d.get("placements")) if isinstance(p, dict)]
    return [i for i in found if isinstance(i, str)]


def leak_status(scene_text, entries: list, digests: list[tuple[str, str]], bench: Benchmark) -> str:
    """No benchmark identity in the scene or a reference's provenance, no reference drawn from a
    benchmark sample, no image (``digests``: (path, sha256)) a copy of a benchmark image."""
    scene, _ = parse(scene_text)
    for ident in _named_identities(scene):
        if ident in bench.identities:
            return f"scene names benchmark identity {ident!r}"
    for k, d in enumerate(entries):
        for ident in _named_identities(d):
            if ident in bench.identities:
                return f"ref_scenes[{k}] names benchmark identity {ident!r}"
        if isinstance(d, dict) and isinstance(d.get("source"), str) and d["source"] in bench.ids:
            return f"ref_scenes[{k}] was drawn from benchmark sample {d['source']!r}"
    for rel, digest in digests:
        if digest in bench.images:
            return f"{rel} is a copy of {bench.images[digest]}"
    return OK


# ---- one row -----------------------------------------------------------------------------------

def row_checks(rec: dict, root: str, decode: bool, bench: Benchmark | None) -> dict[str, str]:
    """Every check of one manifest row (all columns present, missing ones None) of the dataset in
    the resolved folder ``root``: {check column: "ok" or the problem}. Without ``decode`` the
    files are only located, so sizes, modes, labels, boxes and byte copies go unchecked; without
    ``bench`` (not training data) so does leakage."""
    w, h, n = rec["width"], rec["height"], _int(rec["n_subjects"])
    digests: list[tuple[str, str]] = []  # (path, sha256) of the images a benchmark copy could hide in
    hashing = bench is not None and bool(bench.images)

    def image(rel, modes, hashed=True):
        status, data, im = open_image(root, rel, decode)
        if im is None:
            return status, None
        if hashed and hashing:
            digests.append((rel, sha256(data)))
        return picture_status(rel, im, w, h, modes), im

    out = {"target_status": image(rec["target"], RGB)[0]}
    mask, mask_im = image(rec["mask"], LABEL_MODES, hashed=False)
    labels = np.asarray(mask_im) if mask == OK and mask_im is not None else None
    out["mask_status"] = label_status(rec["mask"], labels, n) if labels is not None else mask
    refs = [image(r, RGB)[0] for r in _items(rec["refs"])]  # every one, so every one is hashed
    out["refs_status"] = next((s for s in refs if s != OK), OK)
    usable = labels is not None and out["mask_status"] == OK
    out["boxes_status"] = boxes_status(labels, rec["boxes"]) if usable else OK
    out["scene_status"], scene = scene_status(rec)
    out["ref_scenes_status"], entries = ref_scenes_status(rec)
    out["claims_status"] = claims_status(rec, scene)
    out["prompt_status"] = prompt_status(rec)
    out["leak_status"] = leak_status(rec["scene"], entries, digests, bench) if bench is not None else OK
    return out
