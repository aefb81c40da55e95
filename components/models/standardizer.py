"""SerialGen's stage II: a generator trained on standardized references carries the frozen
standardizer (``components/standardize``) in its folder (``standardizer/``), and every caller
that samples it (the benchmark, the registered pyfunc model, ``subjectflow generate``, the RL
stage) hands it the user's plain references: ``SamplingSettings.sample`` standardizes them with
it, then arranges them in the generator's layout (``sampling.prepare_references``), the same
function SFT applied to its training references.

Two routes, both read from the image by the standardizer's own analyser (never from the
renderer): the person, whose standard view needs a new pose, is redrawn by the generator; an
object, whose standard view is a similarity transform of it on a plain background, is warped
(``objects: warp``, recorded in ``standardizer.json``): cut out by the segmenter's mask, turned
back by the pose estimator's rotation, its upright box centred and scaled to the size objects
have in the training standard views (an image where no subject is found is redrawn).
``objects: cut`` does the same without turning the object: the pose estimator's rotation is
wrong by 45 degrees on average on held-out objects (it cannot tell upside down), and a generator
trained on references turned by it learnt a speckled patchwork (docs/experiments/serialgen.md,
section 8). ``objects: generate`` redraws objects too (the first design, which turned them into
blobs). A folder without the file redraws everything.

Where the standard view stands (``placement``): ``centre``, SerialGen's canonical view (centred,
at the training standard views' size); or ``keep``, the standard view moved back to where and
how large the reference showed its subject (an object turned upright about its own centre, at
its own scale; the person's redraw shifted and scaled to the area the reference's subject
covers). This project's generator takes each subject's place and size from its reference (the
in-place pairs of ``multisubject``, the slots of ``models/layout.py``), so a centred standard
view removes that channel along with pose and background; ``keep`` removes pose, rotation and
background only. With ``keep``, ``min_extent`` standardizes size from below: a subject smaller
than that share of the side (a user's far-away subject) is enlarged to it where it stands, moved
inwards only as far as the frame needs. A generator trained on standardized references records
the placement it was trained with in its copy of the standardizer.

Standardizing is deterministic per image: the ODE starts from noise seeded by the image's bytes,
so one reference maps to one standardized view whichever batch it comes in, and repeated
references are computed once (cached).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..world import backgrounds
from .conditioning import subject_crops
from .generator import to_model, to_uint8

FOLDER = "standardizer"
ROUTES = "standardizer.json"
OBJECT_ROUTES = ("warp", "cut", "generate")
CUT_OUT = ("warp", "cut")  # the routes that cut an object out by the analyser's mask, sized by object_extent
PLACEMENTS = ("centre", "keep")
RESAMPLE = ("nearest", "bilinear")
FLOOR_RESAMPLE = "nearest"  # what a floor set now enlarges by: the world's subjects are pixel-drawn
# One prompt for every reference: a user's reference comes with no category or pose, so the
# standardizer reads both from the image (the analyser does, for its conditioning).
PROMPT = f"image 1 standardized: large, front view, centred, {backgrounds.PHRASES['plain']}"


@dataclass(frozen=True)
class Routes:
    """How references reach their standard view (``standardizer.json``): ``objects`` warp, cut or
    generate; ``object_extent``, the longer side of an object's box in the standard view as a
    share of the image's side (the median over the training standard views; a warped object is
    scaled to it); ``placement``, centre or keep (see the module's docstring); ``min_extent``, with
    keep, the share of the side a subject's box's longer side is enlarged to if it is smaller (0:
    never), the subject moved inwards as far as it must to stay whole; ``floor_resample``, how an
    object so enlarged is resampled (``FLOOR_RESAMPLE`` for floors set since it; bilinear, for
    folders that do not record it, blurred the world's pixel-drawn subjects: the aesthetic judge
    scores such references 0.35 lower, and the generator copied the blur)."""

    objects: str = "generate"
    object_extent: float = 0.0
    placement: str = "centre"
    min_extent: float = 0.0
    floor_resample: str = "bilinear"

    def __post_init__(self):
        if self.objects not in OBJECT_ROUTES:
            raise ValueError(f"{ROUTES}: objects must be one of {OBJECT_ROUTES}, not {self.objects!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"{ROUTES}: placement must be one of {PLACEMENTS}, not {self.placement!r}")
        if self.floor_resample not in RESAMPLE:
            raise ValueError(f"{ROUTES}: floor_resample must be one of {RESAMPLE}, not {self.floor_resample!r}")
        if not 0 <= self.min_extent <= 1:
            raise ValueError(f"{ROUTES}: min_extent must be in [0, 1], got {self.min_extent}")
        if self.objects in CUT_OUT and not 0 < self.object_extent <= 1:
            raise ValueError(f"{ROUTES}: cutting objects out needs an object_extent in (0, 1], got {self.object_extent}")

    def save(self, folder: str | Path) -> None:
        (Path(folder) / ROUTES).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Routes:
        path = Path(folder) / ROUTES
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()


def is_person(pose: torch.Tensor) -> torch.Tensor:
    """(B,) bool from the analyser's pose (B, POSE_DIMS): its four limbs' (sin, cos) pairs lie on
    the unit circle for the person and at zero for an object (``conditioning.pose_vector``)."""
    return pose[:, :8].reshape(-1, 4, 2).norm(dim=-1).mean(dim=1) > 0.5


def warp_to_standard(x: torch.Tensor, fg: torch.Tensor, rotation: torch.Tensor, extent: float,
                     background: torch.Tensor, in_place: bool = False,
                     min_extent: float = 0.0, floor_resample: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Objects' standard views by a similarity transform: images ``x`` (B, 3, S, S) in [-1, 1],
    foreground probabilities ``fg`` (B, S, S), rotations (B,) in degrees, clockwise on screen as
    the renderer turns them. Each subject (``fg > 0.5``) is turned back upright, the centre of its
    upright box put at the image's centre and the box's longer side scaled to ``extent`` of the
    image's side, then laid on ``background`` (3,) by its soft mask. Every foreground pixel counts
    towards the box: keeping only the mask's largest part lost more (held-out objects 0.866
    against 0.872) than stray pixels cost. ``in_place``: the subject is turned upright about its
    box's centre and left where it is, at its own scale (``extent`` unused); one whose upright box's
    longer side is under ``min_extent`` of the side is enlarged to it, moved inwards as far as it
    must to stay in the frame, resampled by ``floor_resample`` (nearest or bilinear).
    Returns the images and which had a subject (B,) bool: an image with none (under 4 pixels) is
    returned as it is."""
    b, _, side, _ = x.shape
    out, found = x.clone(), torch.zeros(b, dtype=torch.bool)
    coords = (torch.arange(side) + 0.5 - side / 2).float()
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    grid_out = torch.stack([xx, yy], -1)  # (S, S, 2): each output pixel's offset from the centre
    for i in range(b):
        m = fg[i] > 0.5
        if int(m.sum()) < 4:
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        pts = torch.stack([xs, ys], -1).float() + 0.5
        r = math.radians(float(rotation[i]))
        turn = torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])  # upright -> as drawn
        upright = pts @ turn  # each subject pixel turned back (row vectors: p @ R = R^T p)
        lo, hi = upright.min(0).values - 0.5, upright.max(0).values + 0.5
        centre = turn @ ((lo + hi) / 2)
        if in_place:  # k: source pixels per output pixel; enlarged (k < 1) only under min_extent
            k = min(1.0, float((hi - lo).max()) / (min_extent * side)) if min_extent else 1.0
            lands = inside(centre, (hi - lo) / k, side) if k < 1 else centre  # where its centre lands
            offset = grid_out + side / 2 - lands
        else:
            k, offset = float((hi - lo).max()) / (extent * side), grid_out
        src = (offset @ turn.T) * k + centre  # the source pixel each output pixel reads
        grid = (src / (side / 2) - 1)[None]
        mode = floor_resample if in_place and k < 1 else "bilinear"
        img = F.grid_sample(x[i:i + 1], grid, mode=mode, padding_mode="border", align_corners=False)
        alpha = F.grid_sample(fg[i][None, None], grid, mode=mode, padding_mode="zeros", align_corners=False)
        out[i] = (alpha * img + (1 - alpha) * background[:, None, None])[0]
        found[i] = True
    return out, found


def place_like(x: torch.Tensor, fg: torch.Tensor, fg_ref: torch.Tensor,
               background: torch.Tensor, min_extent: float = 0.0) -> torch.Tensor:
    """Standard views ``x`` (B, 3, S, S) in [-1, 1] moved to where their references showed the
    subject: each view's subject (``fg`` (B, S, S) > 0.5) scaled to the area the reference's
    (``fg_ref`` > 0.5) covers and its box's centre put on the centre of the reference's box; what
    comes from outside the view is ``background`` (3,). A subject whose box's longer side would
    be under ``min_extent`` of the side is scaled up to it, moved inwards as far as it must to stay
    in the frame. A view or reference with no subject (under 4 pixels) is left as it is."""
    side = x.shape[-1]
    out = x.clone()
    coords = torch.arange(side).float() + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    pixels = torch.stack([xx, yy], -1)  # (S, S, 2) absolute (x, y)
    for i in range(len(x)):
        m, r = fg[i] > 0.5, fg_ref[i] > 0.5
        if int(m.sum()) < 4 or int(r.sum()) < 4:
            continue
        (view_centre, size), (ref_centre, _) = _box(m), _box(r)
        scale = math.sqrt(float(r.sum()) / float(m.sum()))  # output pixels per view pixel
        lands = ref_centre
        if min_extent and float(size.max()) * scale < min_extent * side:
            scale = min_extent * side / float(size.max())
            lands = inside(lands, size * scale, side)
        src = (pixels - lands) / scale + view_centre
        grid = (src / (side / 2) - 1)[None]
        moved = F.grid_sample(x[i:i + 1] - background[:, None, None], grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        out[i] = moved[0] + background[:, None, None]
    return out


def _box(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre (x, y) and size (w, h) of a (S, S) bool mask's box, in pixel units."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return torch.tensor([x0 + x1, y0 + y1]).float() / 2, torch.tensor([x1 - x0, y1 - y0]).float()


def inside(centre: torch.Tensor, size: torch.Tensor, side: int) -> torch.Tensor:
    """A box's centre (x, y) moved the least that puts a box of ``size`` (w, h) inside the frame
    (centred on an axis the box is longer than)."""
    half = size / 2
    return torch.where(half * 2 >= side, torch.full_like(centre, side / 2),
                       torch.minimum(torch.maximum(centre, half), side - half))


def view_mask(x: torch.Tensor, background: torch.Tensor, tol: float = 0.12) -> torch.Tensor:
    """(B, S, S) float: the pixels of standard views ``x`` (B, 3, S, S) in [-1, 1] whose colour
    differs from the plain ``background`` (3,) by more than ``tol`` in some channel (the
    analyser, trained on busy scenes, is not asked to read a plain one; ``tol`` is about 15 of
    255, under the gap between the plain grey and the world's nearest colours)."""
    return ((x - background[:, None, None]).abs().amax(dim=1) > tol).float()


def box_extent(masks: np.ndarray) -> float:
    """The median over ``masks`` (N, S, S) of the longer side of each mask's box, as a share of S:
    ``Routes.object_extent`` from the training standard views of objects."""
    sides = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(ys):
            sides.append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
    return float(np.median(sides)) / masks.shape[-1]


def plain_background() -> torch.Tensor:
    """The standard view's background colour (3,) in [-1, 1], as the renderer paints it."""
    return to_model((backgrounds.draw(backgrounds.PLAIN, 0, 1, 1) * 255).round().astype(np.uint8)[None])[0, :, 0, 0]


class Standardizer:
    """``standardizer(images) -> images``: each reference (uint8 (S, S, 3)) to its standardized view."""

    def __init__(self, model, sampling, routes: Routes = Routes(), batch: int = 128):
        self.model, self.sampling, self.routes, self.batch = model.eval(), sampling, routes, batch
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, folder: str | Path) -> Standardizer:
        from .generator import SubjectGenerator
        from .sampling import SamplingSettings

        model = SubjectGenerator.from_pretrained(folder)
        if model.ref_conditioner is None:
            raise ValueError(f"{folder}: not a standardizer (no reference conditioning)")
        return cls(model, SamplingSettings.load(folder), Routes.load(folder))

    @classmethod
    def load_from(cls, generator_folder: str | Path) -> Standardizer | None:
        """The standardizer a generator folder carries, or None."""
        sub = Path(generator_folder) / FOLDER
        return cls.load(sub) if sub.is_dir() else None

    def save(self, generator_folder: str | Path) -> None:
        """Into ``generator_folder/standardizer``, as ``load_from`` reads it."""
        out = Path(generator_folder) / FOLDER
        self.model.save_pretrained(out)
        self.sampling.save(out)
        self.routes.save(out)

    @staticmethod
    def key(image: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()

    def noise(self, keys: Sequence[str]) -> torch.Tensor:
        """Each image's starting noise, seeded by its bytes."""
        n, c = self.model.config.grid ** 2, self.model.config.channels
        return torch.stack([torch.randn(n, c, generator=torch.Generator().manual_seed(int(k[:15], 16)))
                            for k in keys])

    @torch.no_grad()
    def analyse(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The analyser's foreground probabilities (B, S, S) and pose (B, POSE_DIMS) of ``images``."""
        analyser = self.model.ref_analyser
        x = to_model(images).to(next(analyser.parameters()).device)
        logits = analyser.segment(x)
        return torch.sigmoid(logits).cpu(), analyser.pose(subject_crops(x, logits > 0)).cpu()

    @torch.no_grad()
    def route(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) bool: which images the analyser takes for the person (redrawn by the generator)."""
        return is_person(self.analyse(images)[1]).numpy()

    def placed(self, placement: str, min_extent: float | None = None) -> Standardizer:
        """This standardizer with its standard views at ``placement`` (centre or keep), subjects
        under ``min_extent`` enlarged, resampled by ``FLOOR_RESAMPLE`` (``Routes``; None: the floor
        and resampling it has); its cache is dropped if that changes anything."""
        routes = replace(self.routes, placement=placement) if min_extent is None else \
            replace(self.routes, placement=placement, min_extent=min_extent, floor_resample=FLOOR_RESAMPLE)
        if routes != self.routes:
            self.routes, self._cache = routes, {}
        return self

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        keys = [self.key(im) for im in images]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        first = {k: im for k, im in zip(keys, images)}
        views: dict[str, np.ndarray] = {}
        if self.routes.objects in CUT_OUT:
            todo = self._warp_objects(todo, first, views)
        s = self.sampling
        for i in range(0, len(todo), self.batch):
            part = todo[i:i + self.batch]
            out = self.model.sample([PROMPT] * len(part), [[first[k]] for k in part], steps=s.steps,
                                    guidance=s.guidance, precision=s.precision, noise=self.noise(part))["images"]
            if self.routes.placement == "keep":
                bg, x = plain_background(), to_model(out)
                out = to_uint8(place_like(x, view_mask(x, bg), self.analyse([first[k] for k in part])[0], bg,
                                          self.routes.min_extent))
            views.update(zip(part, out))
        self._cache.update(views)
        return [self._cache[k] for k in keys]

    def _warp_objects(self, todo: list[str], images: dict[str, np.ndarray], views: dict[str, np.ndarray]) -> list[str]:
        """Warp the objects among ``todo`` into ``views``; returns the rest: the person's, and any
        image in which the analyser finds no subject (the generator reads it whole)."""
        rest, bg = [], plain_background()
        for i in range(0, len(todo), self.batch):
            part = todo[i:i + self.batch]
            fg, pose = self.analyse([images[k] for k in part])
            objects, done = [j for j, p in enumerate(is_person(pose).tolist()) if not p], {}
            if objects:
                idx = torch.tensor(objects)
                rotation = torch.rad2deg(torch.atan2(pose[idx, 8], pose[idx, 9])) if self.routes.objects == "warp" \
                    else torch.zeros(len(idx))  # cut: turned as the reference shows it
                warped, found = warp_to_standard(to_model([images[part[j]] for j in objects]), fg[idx], rotation,
                                                 self.routes.object_extent, bg, self.routes.placement == "keep",
                                                 self.routes.min_extent, self.routes.floor_resample)
                done = {part[j]: w for j, w, f in zip(objects, to_uint8(warped), found.tolist()) if f}
            views.update(done)
            rest += [k for k in part if k not in done]
        return rest

    def references(self, refs: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        """Every row's references standardized (rows of any lengths)."""
        flat = self([im for r in refs for im in r])
        out, i = [], 0
        for r in refs:
            out.append(flat[i:i + len(r)])
            i += len(r)
        return out
