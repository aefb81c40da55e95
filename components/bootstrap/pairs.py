"""The bootstrapping pipeline: ground, redraw and judge every subject of the multi-subject scenes,
keep the pairs whose every reference passes, recompose more many-subject pairs from the
identities that passed, gate the dataset and publish it with its reports."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from ..config import Params  # noqa: E402
from ..data.grids import grid, load_rgb  # noqa: E402
from ..data.manifest import MANIFEST, read_manifest  # noqa: E402
from ..io import atomic_dir, write_text_atomic  # noqa: E402
from ..judging.base import isolate, keep_in_place  # noqa: E402
from ..judging.sets import load_judge_set  # noqa: E402
from ..models import layout  # noqa: E402
from ..models.generator import SubjectGenerator  # noqa: E402
from ..models.sampling import SamplingSettings  # noqa: E402
from . import SPLIT
from .recompose import recompose
from .redraw import draw_scenes, new_backgrounds, redraw_scenes, regeneration_prompt

STATUSES = ("kept", "not_in_target", "not_in_reference", "inconsistent", "not_drawn")
REASONS = STATUSES[1:4]  # why a pair is dropped; not_drawn never is the reason


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


def bootstrap(params: Params, data: Path, bench: Path, generator: Path, judges_dir: Path, out: Path,
              reports: Path) -> dict:
    """Bootstrap multi-subject pairs from the scenes in ``data`` with the single-subject
    ``generator`` folder, filter them with the judges under ``judges_dir``, gate them (no
    identity of ``bench`` may leak in) and publish them to ``out``, with reports in ``reports``;
    returns the stage's metrics."""
    from ..data.checks import load_benchmark
    from ..data.gate import validate_datasets

    cfg, t0 = params.multisubject, time.perf_counter()
    manifest = read_manifest(data)
    if cfg.max_scenes is not None and cfg.max_scenes < len(manifest):
        manifest = manifest.iloc[draw_scenes(manifest.subset, cfg.max_scenes, cfg.subset_weights, cfg.seed)]
        manifest = manifest.reset_index(drop=True)
    judges = load_judge_set(judges_dir / cfg.judge_set, params.judges)
    model = SubjectGenerator.from_pretrained(generator).eval()
    # regenerate as the single-subject model was trained to sample, unless multisubject says otherwise
    sampling = SamplingSettings.load(generator).override(cfg.sample_steps, cfg.guidance, cfg.sample_precision)
    cfg = cfg.model_copy(update={"sample_steps": sampling.steps, "guidance": sampling.guidance,
                                 "sample_precision": sampling.precision})
    rng = np.random.default_rng(cfg.seed)

    # One row per (scene, subject).
    targets = [load_rgb(data / t) for t in manifest.target]
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
        prompts, [subj.category[j] for j in todo], cfg, params.judges.crop_size, fan=(params.resources, generator))
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
    reports.mkdir(parents=True, exist_ok=True)
    kept_rows = [i for i in range(len(manifest)) if pairs[i] == "kept"]
    subjects_of = {i: g.sort_values("k") for i, g in subj.groupby("row")}

    def describe(j) -> str:  # a bootstrapped reference's provenance (its ref_scenes entry)
        return json.dumps({"generated_by": str(generator), "prompt": subj.prompt[j],
                           "in_place": bool(subj.in_place[j]),
                           "background": subj.background[j], "similarity": round(float(subj.similarity[j]), 4),
                           "source": manifest.id[subj.row[j]]})

    passed = {}  # identity -> its passing references, from any scene (kept or not)
    for j in subj.index[subj.status == "kept"]:
        passed.setdefault(manifest.identities[subj.row[j]][subj.k[j]], []).append(
            (regen_of[j], [int(v) for v in subj.ref_box[j]], describe(j)))
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        records = []
        for i in kept_rows:
            rec = manifest.iloc[i].to_dict()
            sid = f"{SPLIT}-{i:06d}"
            shutil.copyfile(data / rec["target"], tmp / "images" / f"{sid}.png")
            shutil.copyfile(data / rec["mask"], tmp / "images" / f"{sid}_mask.png")
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
        frame = pd.DataFrame(records, columns=list(manifest.columns))
        frame.to_parquet(tmp / MANIFEST, index=False)
        gate = validate_datasets(params, {SPLIT: tmp}, reports / "validate", load_benchmark(bench))

    # 5. reports
    subj.assign(target_box=subj.target_box.map(lambda b: None if b is None else list(b)),
                ref_box=subj.ref_box.map(lambda b: None if b is None else list(b))
                ).drop(columns="row").to_csv(reports / "subjects.csv", index=False)
    scenes = manifest[["id", "subset"]].assign(status=[pairs[i] for i in range(len(manifest))], in_place=in_place)
    scenes.to_csv(reports / "pairs.csv", index=False)
    _histogram(subj, cfg.threshold, reports / "similarity.png")
    _example_grids(manifest, targets, subj, pairs, input_of, regen_of, cfg.grid_rows, reports)
    if recomposed:
        shown = recomposed[:: max(len(recomposed) // cfg.grid_rows, 1)][:cfg.grid_rows]
        grid([([load_rgb(out / r) for r in rec["refs"]], load_rgb(out / rec["target"]),
               f"recomposed {rec['subset']}: {rec['prompt']}") for rec in shown]).save(reports / "recomposed.png")

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
    write_text_atomic(reports / "summary.md", "\n".join(lines) + "\n")
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
