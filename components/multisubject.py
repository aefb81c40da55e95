"""multisubject stage: PSR's multi-subject data bootstrapping.

PSR builds multi-subject training pairs without multi-subject references: a multi-subject image
is made first (here: rendered, ``data/multi``), then

1. the grounding judge finds each subject by its category in that image and crops it;
2. the single-subject model (``models/pretrain``) redraws each crop in a new scene (another
   background, named in a single-subject prompt), and those regenerations become the references.
   The crop is handed over either re-centred at a fixed size (``isolate``: the reference shows
   the subject somewhere, as a user's photo would) or, for a share ``in_place`` of the scenes,
   where it sits in the scene (``keep_in_place``): a single-subject model that learnt to keep a
   subject's placement then draws it there, and the pair teaches SFT to put each reference's
   subject where it already is while drawing several at once (the multi-subject counterpart of
   ``synthesize.single_same_placement``);
3. the reward judges compare each regeneration with the subject it came from (encoder cosine of
   the grounded crops); a pair keeps only if every one of its references reaches the threshold.

Steps 2-3 are rejection sampling, scene by scene: a subject is redrawn (other sampler seeds) until
a redraw passes, at most ``candidates`` times; a subject that never passes ends its scene, and the
scene's later subjects are not drawn at all. Since a k-subject pair needs k passing references,
this is what makes three- and four-subject pairs affordable: retries go where they are needed,
and no draws are spent on scenes already lost.

Each subject ends with a status: ``kept``, ``not_in_target`` (the grounder missed it in the
scene), ``not_in_reference`` (no redraw shows such a subject), ``inconsistent`` (every redraw's
cosine is below the threshold) or ``not_drawn`` (an earlier subject of its scene failed). The
bootstrapped dataset (``data/multisubject``, the same manifest layout, ``split = multisubject``)
must pass the validation gate before it is published. Reports:
per-subject statuses and similarities, kept fraction per subset, why pairs were dropped, the
similarity histogram with the threshold, and grids of kept and dropped pairs.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from .config import Params  # noqa: E402
from .datasets import MANIFEST, read_manifest  # noqa: E402
from .grids import grid, load_rgb  # noqa: E402
from .io import atomic_dir, write_text_atomic  # noqa: E402
from .judges.base import Box, JudgeSet, crop_subject  # noqa: E402
from .judges.sets import load_judge_set  # noqa: E402
from .models import layout  # noqa: E402
from .models.generator import SubjectGenerator  # noqa: E402
from .models.sampling import SamplingSettings  # noqa: E402
from .stage import path_field, stage_main  # noqa: E402
from . import world  # noqa: E402
from .world import Identity, backgrounds  # noqa: E402
from .world.scenes import N_SUBJECTS  # noqa: E402

SPLIT = "multisubject"
STATUSES = ("kept", "not_in_target", "not_in_reference", "inconsistent", "not_drawn")
REASONS = STATUSES[1:4]  # why a pair is dropped; not_drawn never is the reason
SEED_STRIDE = 100_003  # sampler seed offset between redraw rounds (more than any round has batches)


@dataclass
class MultisubjectPaths:
    data: Path = path_field("the rendered multi-subject dataset (data/multi)")
    bench: Path = path_field("the benchmark dataset (data/bench), for the gate's leakage check")
    generator: Path = path_field("the single-subject generator (models/pretrain)")
    judges: Path = path_field("the judges stage's output (models/judges)")
    out: Path = path_field("folder receiving the bootstrapped dataset (data/multisubject)")
    reports: Path = path_field("folder for statuses, summary, grids and the gate's reports")


def draw_scenes(subsets: pd.Series, n: int, weights: dict[str, float], seed: int) -> np.ndarray:
    """``n`` row indices drawn without replacement, each row weighted by its subset's weight
    (default 1), in ascending order."""
    w = subsets.map(lambda s: weights.get(s, 1.0)).to_numpy(float)
    return np.sort(np.random.default_rng(seed).choice(len(subsets), n, replace=False, p=w / w.sum()))


def isolate(image: np.ndarray, box: Box, subject_size: int) -> np.ndarray:
    """The subject in ``box`` as a single-subject model's reference looks: its square crop
    scaled to ``subject_size`` pixels, centred in an image of the same size as ``image``, the
    surround continued from the crop's edges."""
    h, w = image.shape[:2]
    side = min(subject_size, h, w)
    crop = crop_subject(image, box, size=side, pad=0.1)
    top, left = (h - side) // 2, (w - side) // 2
    return np.pad(crop, ((top, h - side - top), (left, w - side - left), (0, 0)), mode="edge")


def keep_in_place(image: np.ndarray, box: Box, pad: float = 0.1) -> np.ndarray:
    """The subject in ``box`` where it sits in ``image``, alone: the box (padded by ``pad`` of its
    longer side) kept as it is, everything around it continued from the box's edges, so the other
    subjects of the scene are gone. The in-place counterpart of :func:`isolate`."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    p = int(round(max(x1 - x0, y1 - y0) * pad))
    x0, y0, x1, y1 = max(x0 - p, 0), max(y0 - p, 0), min(max(x1 + p, x0 + 1), w), min(max(y1 + p, y0 + 1), h)
    return np.pad(image[y0:y1, x0:x1], ((y0, h - y1), (x0, w - x1), (0, 0)), mode="edge")


def regeneration_prompt(category: str, background: str) -> str:
    """A single-subject prompt, as the pretraining data words them."""
    return f"the {category} from image 1 {backgrounds.PHRASES[background]}"


def new_backgrounds(rng: np.random.Generator, avoid: list[str]) -> list[str]:
    """One background per subject, each different from the scene's own (``avoid``)."""
    return [str(rng.choice([b for b in backgrounds.SCENE_BACKGROUNDS if b != a])) for a in avoid]


def regenerate(model: SubjectGenerator, inputs: list[np.ndarray], prompts: list[str], batch_size: int,
               steps: int, guidance: float, seed: int) -> list[np.ndarray]:
    """The single-subject model's image for each (isolated subject, prompt), in batches."""
    out: list[np.ndarray] = []
    for b, start in enumerate(range(0, len(inputs), batch_size)):
        chunk = slice(start, start + batch_size)
        out += list(model.sample(prompts[chunk], [[x] for x in inputs[chunk]], steps=steps, guidance=guidance,
                                 seed=seed + b)["images"])
    return out


def consistency(judges: JudgeSet, targets: list[np.ndarray], target_boxes: list[Box], regens: list[np.ndarray],
                categories: list[str], crop_size: int) -> tuple[list[Box | None], np.ndarray]:
    """Ground each category in its regeneration and compare the encoder embeddings of the
    subject's crop in the target and in the regeneration. Returns the regeneration boxes (None:
    not found) and the cosines (NaN where not found)."""
    found = judges.grounder.ground(regens, categories)
    boxes = [g.box for g in found]
    sims = np.full(len(regens), np.nan, np.float32)
    idx = [i for i, b in enumerate(boxes) if b is not None]
    if idx:
        a = judges.encoder.embed([crop_subject(targets[i], target_boxes[i], crop_size) for i in idx])
        b = judges.encoder.embed([crop_subject(regens[i], boxes[i], crop_size) for i in idx])
        sims[idx] = np.sum(a * b, axis=1)
    return boxes, sims


def _rank(sim: float) -> float:
    """Ordering of candidates: a higher cosine is better, and any found subject beats none (NaN)."""
    return -np.inf if np.isnan(sim) else float(sim)


@dataclass
class Redraws:
    """Per subject: the best regeneration drawn (None: never drawn), its box in it, its cosine
    to the subject (NaN: not found in it) and how many times it was drawn."""

    images: list
    boxes: list
    sims: np.ndarray
    tries: np.ndarray


def redraw_scenes(model: SubjectGenerator, judges: JudgeSet, scenes: list[list[int]], targets: list[np.ndarray],
                  target_boxes: list[Box], inputs: list[np.ndarray], prompts: list[str], categories: list[str], cfg,
                  crop_size: int) -> Redraws:
    """Rejection sampling of references, scene by scene. ``scenes`` lists each scene's subjects
    (indices into the other lists) in order. Every round redraws the current subject of every
    live scene in one batched sampler pass (seed ``cfg.seed + round * SEED_STRIDE``) and judges
    it: a subject passes when its cosine reaches ``cfg.threshold`` and the scene moves on to its
    next subject; a subject that fails ``cfg.candidates`` draws ends its scene, whose later
    subjects are never drawn (a pair needs every subject, so they could not save it). The best
    draw of each subject is kept for the reports."""
    n = len(inputs)
    out = Redraws([None] * n, [None] * n, np.full(n, np.nan, np.float32), np.zeros(n, int))
    cursor = {s: 0 for s, members in enumerate(scenes) if members}  # live scene -> position of its current subject
    rnd = 0
    while cursor:
        current = [scenes[s][pos] for s, pos in cursor.items()]
        regens = regenerate(model, [inputs[j] for j in current], [prompts[j] for j in current], cfg.batch_size,
                            cfg.sample_steps, cfg.guidance, cfg.seed + rnd * SEED_STRIDE)
        boxes, sims = consistency(judges, [targets[j] for j in current], [target_boxes[j] for j in current], regens,
                                  [categories[j] for j in current], crop_size)
        for j, image, box, sim in zip(current, regens, boxes, sims):
            out.tries[j] += 1
            if out.images[j] is None or _rank(sim) > _rank(out.sims[j]):
                out.images[j], out.boxes[j], out.sims[j] = image, box, sim
        for s in list(cursor):
            j = scenes[s][cursor[s]]
            if _rank(out.sims[j]) >= cfg.threshold:
                cursor[s] += 1
                if cursor[s] == len(scenes[s]):
                    del cursor[s]  # every subject passed
            elif out.tries[j] >= cfg.candidates:
                del cursor[s]  # this subject failed: the pair is lost
        rnd += 1
        print(f"multisubject round {rnd}: {len(current)} redraws, {int(np.sum(sims >= cfg.threshold))} passed, "
              f"{len(cursor)} scenes still drawing", flush=True)
    return out


def in_slots(sample: world.Sample, refs: list[tuple[np.ndarray, list[int], str]],
             rng: np.random.Generator) -> tuple[world.Sample, list[tuple[np.ndarray, list[int], str]]]:
    """The sample with subject k moved to slot k of the ``slots`` reference layout (jittered) and
    reference k packed into the same slot, its subject box with it (``models/layout.py``). Only
    positions change: a Three or Four prompt does not state them."""
    n = len(refs)
    centres = layout.slot_centres(n, rng)
    placements = tuple(replace(p, cx=x, cy=y) for p, (x, y) in zip(sample.target.placements, centres))
    packed = [(layout.pack(image, k, n), layout.pack_box(box, k, n, image.shape[0]), desc)
              for k, (image, box, desc) in enumerate(refs)]
    return replace(sample, target=replace(sample.target, placements=placements)), packed


def recompose(params: Params, passed: dict[str, list[tuple[np.ndarray, list[int], str]]], counts: dict[str, int],
              seed: int, root: Path) -> list[dict]:
    """New scenes of the world for ``counts`` tasks, rendered (targets, masks, claims as in
    ``synthesize``) with only identities that have a passing reference, each subject given one
    of its passing references. A reference passed the encoder's test against its identity in
    another scene, so it stands for that identity in any scene: the pairs a many-subject scene
    yields only when all of its k subjects pass come here from subjects that passed anywhere.
    With ``multisubject.recompose_layout: slots`` only re-centred references are handed over, and
    each scene is laid out by :func:`in_slots`. Manifest rows (written under ``root``), ids
    ``multisubject-<task>-<i>``."""
    from .synthesize import write_sample

    slots = params.multisubject.recompose_layout == "slots"
    if slots:  # a packed reference must show its subject centred before it is shrunk into its slot
        recentred = {i: [r for r in refs if not json.loads(r[2])["in_place"]] for i, refs in passed.items()}
        passed = {i: refs for i, refs in recentred.items() if refs}
    idents = [Identity.from_id(i) for i in sorted(passed)]
    pool = {c: tuple(i for i in idents if i.category == c) for c in sorted({i.category for i in idents})}
    rng = np.random.default_rng([seed, 7])  # its own stream: the redraws' draws stay as they were
    rows = []
    for task, n in counts.items():
        if len(pool) < N_SUBJECTS[task]:
            print(f"multisubject: WARNING {task} needs {N_SUBJECTS[task]} categories with a passing reference, "
                  f"{len(pool)} have one; none recomposed", flush=True)
            continue
        for i in range(n):
            sid = f"{SPLIT}-{task.lower()}-{i:06d}"
            for _ in range(100):  # a draw whose subject hides behind another is drawn again
                sample = world.sample_task(rng, task, pool)
                refs = [passed[p.identity.id][int(rng.integers(len(passed[p.identity.id])))]
                        for p in sample.target.placements]
                if slots:
                    sample, refs = in_slots(sample, refs, rng)
                try:
                    rows.append(write_sample(params.synthesize, SPLIT, sid, sample, root, refs))
                    break
                except RuntimeError:
                    continue
    return rows


def pair_status(statuses: list[str]) -> str:
    """A pair keeps only if all its subjects do; otherwise it is dropped for its first failure
    in the order of STATUSES (a subject missing in the scene outranks an inconsistent one)."""
    for s in STATUSES[1:]:
        if s in statuses:
            return s
    return "kept"


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, optimize=False, compress_level=1)


def _histogram(subjects: pd.DataFrame, threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sims = subjects["similarity"].dropna()
    ax.hist(sims, bins=40, color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", ls="--", label=f"threshold {threshold}")
    ax.set_xlabel("cosine(regenerated reference, subject in scene)")
    ax.set_ylabel("subjects")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(params: Params, paths: MultisubjectPaths) -> dict:
    """Bootstrap multi-subject pairs from ``paths.data`` with the single-subject generator,
    filter them with the reward judges, validate and publish them to ``paths.out``."""
    from .validate import bench_identities, validate_datasets

    cfg, t0 = params.multisubject, time.perf_counter()
    manifest = read_manifest(paths.data)
    if cfg.max_scenes is not None and cfg.max_scenes < len(manifest):
        manifest = manifest.iloc[draw_scenes(manifest.subset, cfg.max_scenes, cfg.subset_weights, cfg.seed)]
        manifest = manifest.reset_index(drop=True)
    judges = load_judge_set(paths.judges / cfg.judge_set, params.judges)
    model = SubjectGenerator.from_pretrained(paths.generator).eval()
    # regenerate as the single-subject model was trained to sample, unless multisubject says otherwise
    sampling = SamplingSettings.load(paths.generator).override(cfg.sample_steps, cfg.guidance)
    cfg = cfg.model_copy(update={"sample_steps": sampling.steps, "guidance": sampling.guidance})
    rng = np.random.default_rng(cfg.seed)

    # One row per (scene, subject).
    targets = [load_rgb(paths.data / t) for t in manifest.target]
    subj = pd.DataFrame([{"row": i, "sample_id": r.id, "subset": r.subset, "k": k, "category": c}
                         for i, r in enumerate(manifest.itertuples()) for k, c in enumerate(r.categories)])
    subj["background"] = [b for r in manifest.itertuples() for b in new_backgrounds(rng, [r.background] * len(r.categories))]
    in_place = np.random.default_rng([cfg.seed, 11]).random(len(manifest)) < cfg.in_place  # own stream
    subj["in_place"] = in_place[subj.row]

    # 1. ground every subject in its scene
    grounded = judges.grounder.ground([targets[i] for i in subj.row], list(subj.category))
    subj["target_box"] = [g.box for g in grounded]
    t_ground = time.perf_counter()

    # 2-3. redraw the subjects of scenes whose every subject was found, in a new scene each, and
    # judge the redraws (rejection sampling, scene by scene: see redraw_scenes)
    complete = subj.groupby("row")["target_box"].transform(lambda b: b.notna().all())
    todo = list(subj.index[complete])
    inputs = [keep_in_place(targets[subj.row[j]], subj.target_box[j]) if subj.in_place[j] else
              isolate(targets[subj.row[j]], subj.target_box[j], cfg.subject_size) for j in todo]
    prompts = [regeneration_prompt(subj.category[j], subj.background[j]) for j in todo]
    subj["prompt"] = None
    subj.loc[todo, "prompt"] = prompts
    position = {j: n for n, j in enumerate(todo)}
    scene_lists = [[position[j] for j in g.sort_values("k").index] for _, g in subj.loc[todo].groupby("row")]
    drawn = redraw_scenes(
        model, judges, scene_lists, [targets[subj.row[j]] for j in todo], [subj.target_box[j] for j in todo], inputs,
        prompts, [subj.category[j] for j in todo], cfg, params.judges.crop_size)
    t_regen = time.perf_counter()

    subj["ref_box"], subj["similarity"], subj["draws"] = None, np.nan, 0
    subj["ref_box"] = subj["ref_box"].astype(object)
    for n, j in enumerate(todo):
        subj.at[j, "ref_box"], subj.at[j, "similarity"], subj.at[j, "draws"] = \
            drawn.boxes[n], drawn.sims[n], drawn.tries[n]
    subj["status"] = [
        "not_in_target" if tb is None else "not_drawn" if d == 0 else "not_in_reference" if rb is None else
        "inconsistent" if s < cfg.threshold else "kept"
        for tb, d, rb, s in zip(subj.target_box, subj.draws, subj.ref_box, subj.similarity)]
    regen_of = {j: drawn.images[n] for n, j in enumerate(todo) if drawn.tries[n]}
    input_of = {j: inputs[n] for n, j in enumerate(todo) if drawn.tries[n]}
    draws = int(drawn.tries.sum())
    pairs = subj.groupby("row")["status"].agg(lambda s: pair_status(list(s)))

    # 4. write the dataset, gate it, publish it
    paths.reports.mkdir(parents=True, exist_ok=True)
    kept_rows = [i for i in range(len(manifest)) if pairs[i] == "kept"]
    subjects_of = {i: g.sort_values("k") for i, g in subj.groupby("row")}

    def describe(j) -> str:  # a bootstrapped reference's provenance (its ref_scenes entry)
        return json.dumps({"generated_by": str(paths.generator), "prompt": subj.prompt[j],
                           "in_place": bool(subj.in_place[j]),
                           "background": subj.background[j], "similarity": round(float(subj.similarity[j]), 4),
                           "source": manifest.id[subj.row[j]]})

    passed = {}  # identity -> its passing references, from any scene (kept or not)
    for j in subj.index[subj.status == "kept"]:
        passed.setdefault(manifest.identities[subj.row[j]][subj.k[j]], []).append(
            (regen_of[j], [int(v) for v in subj.ref_box[j]], describe(j)))
    with atomic_dir(paths.out) as tmp:
        (tmp / "images").mkdir()
        records = []
        for i in kept_rows:
            rec = manifest.iloc[i].to_dict()
            sid = f"{SPLIT}-{i:06d}"
            shutil.copyfile(paths.data / rec["target"], tmp / "images" / f"{sid}.png")
            shutil.copyfile(paths.data / rec["mask"], tmp / "images" / f"{sid}_mask.png")
            rows = subjects_of[i]
            refs, ref_boxes, ref_scenes = [], [], []
            for j, s in zip(rows.index, rows.itertuples()):
                rel = f"images/{sid}_ref{s.k + 1}.png"
                _save(regen_of[j], tmp / rel)
                refs.append(rel)
                ref_boxes.append([int(v) for v in s.ref_box])
                ref_scenes.append(describe(j))
            rec.update(id=sid, split=SPLIT, target=f"images/{sid}.png", mask=f"images/{sid}_mask.png", refs=refs,
                       ref_boxes=ref_boxes, ref_scenes=ref_scenes)
            records.append(rec)
        recomposed = recompose(params, passed, cfg.recompose, cfg.seed, tmp)
        records += recomposed
        layout.save_layout(tmp, cfg.recompose_layout if recomposed else "as_given")
        out = pd.DataFrame(records, columns=list(manifest.columns))
        out.to_parquet(tmp / MANIFEST, index=False)
        gate = validate_datasets(params, {SPLIT: tmp}, paths.reports / "validate", bench_identities(paths.bench))

    # 5. reports
    subj.assign(target_box=subj.target_box.map(lambda b: None if b is None else list(b)),
                ref_box=subj.ref_box.map(lambda b: None if b is None else list(b))
                ).drop(columns="row").to_csv(paths.reports / "subjects.csv", index=False)
    scenes = manifest[["id", "subset"]].assign(status=[pairs[i] for i in range(len(manifest))], in_place=in_place)
    scenes.to_csv(paths.reports / "pairs.csv", index=False)
    _histogram(subj, cfg.threshold, paths.reports / "similarity.png")
    _example_grids(manifest, targets, subj, pairs, input_of, regen_of, cfg.grid_rows, paths.reports)
    if recomposed:
        shown = recomposed[:: max(len(recomposed) // cfg.grid_rows, 1)][:cfg.grid_rows]
        grid([([load_rgb(paths.out / r) for r in rec["refs"]], load_rgb(paths.out / rec["target"]),
               f"recomposed {rec['subset']}: {rec['prompt']}") for rec in shown]).save(paths.reports / "recomposed.png")

    per_subset = scenes.groupby("subset")["status"].apply(lambda s: round(float((s == "kept").mean()), 4)).to_dict()
    by_mode = {mode: {"scenes": int(sel.sum()), "kept": int((scenes.status[sel] == "kept").sum())}
               for mode, sel in (("in_place", scenes.in_place), ("moved", ~scenes.in_place))}
    dropped = {s: int((scenes.status == s).sum()) for s in REASONS}
    subjects_by_status = {s: int((subj.status == s).sum()) for s in STATUSES}
    metrics = {
        "scenes": len(manifest), "kept": len(kept_rows), "rows": len(records),
        "recomposed": {t: sum(r["subset"] == t for r in recomposed) for t in cfg.recompose},
        "identities_passed": len(passed), "kept_fraction": round(len(kept_rows) / max(len(manifest), 1), 4),
        "kept_fraction_by_subset": per_subset,
        "in_place": by_mode["in_place"], "moved": by_mode["moved"], "dropped_by_reason": dropped, "subjects": len(subj),
        "subjects_by_status": subjects_by_status, "regenerations": draws,
        "draws_per_kept_pair": round(draws / len(kept_rows), 2) if kept_rows else None,
        "similarity_mean": round(float(np.nanmean(subj.similarity)), 4) if draws else None,
        "candidates": cfg.candidates,
        "timings": {"seconds": round(time.perf_counter() - t0, 2),
                    "regenerations_per_second": round(draws / max(t_regen - t_ground, 1e-9), 2)},
        "gate": {"success": gate["success"], "expectations": gate[SPLIT]["expectations"]},
    }
    lines = ["# Multi-subject bootstrapping", "",
             f"{len(kept_rows)} of {len(manifest)} pairs kept ({metrics['kept_fraction']:.1%}); threshold "
             f"{cfg.threshold} on the {cfg.judge_set} judges' encoder cosine.", "",
             "| subset | scenes | kept fraction |", "|---|---|---|"]
    lines += [f"| {k} | {int((scenes.subset == k).sum())} | {v:.1%} |" for k, v in per_subset.items()]
    lines += ["", "| references drawn | scenes | kept |", "|---|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v['scenes']} | {v['kept']} |" for k, v in by_mode.items()]
    lines += ["", "| pairs dropped because a subject was | pairs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in dropped.items()]
    lines += ["", "| subject status | subjects |", "|---|---|"] + [f"| {k} | {v} |" for k, v in subjects_by_status.items()]
    if cfg.recompose:
        lines += ["", f"Recomposed from the {len(passed)} identities with a passing reference: "
                  + ", ".join(f"{v} {k}" for k, v in metrics["recomposed"].items()) + f" pairs; {len(records)} rows "
                  "in all."]
    write_text_atomic(paths.reports / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return metrics


def _example_grids(manifest, targets, subj, pairs, input_of, regen_of, rows: int, reports: Path) -> None:
    """kept.png and dropped.png: per row the crops given to the model, then its regenerations
    | the scene."""
    for name, want in (("kept", lambda s: s == "kept"), ("dropped", lambda s: s != "kept")):
        chosen = [i for i in range(len(manifest)) if want(pairs[i])][:rows]
        cells = []
        for i in chosen:
            sub = subj[subj.row == i].sort_values("k")
            images = []
            for j in sub.index:
                if j in input_of:
                    images += [input_of[j], regen_of[j]]
            label = "; ".join(f"{r.category}: {r.status}" + ("" if np.isnan(r.similarity) else f" {r.similarity:.2f}")
                              for r in sub.itertuples())
            cells.append((images or [targets[i]], targets[i], f"{manifest.id[i]} ({pairs[i]}) {label}"))
        if cells:
            grid(cells, max_refs=8).save(reports / f"{name}.png")


def main(argv=None) -> int:
    return stage_main(SPLIT, run, MultisubjectPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
