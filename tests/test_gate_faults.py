"""The data gate against a corpus of planted faults: each case copies a tiny real synthesized
world, plants one fault (in the manifest and/or the files), gates the faulty dataset and expects
DataValidationError naming the faulty row and the check that caught it. The untouched copy (with
palette-mode masks, which are label maps too) passes.

A gate run costs ~0.6 s of GX bookkeeping whatever the data, so the further faults (ROW_FAULTS),
each caught by one per-row check column, are pinned on that column (``samples_frame``) without
running GX."""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from great_expectations.data_context import AbstractDataContext
from PIL import Image

from components.config import Params
from components.data.checks import OK, load_benchmark
from components.data.gate import samples_frame, validate_datasets
from components.data.manifest import MANIFEST, SPLITS, read_manifest
from components.pipeline.stage import DataValidationError
from components.synthesize import SynthesizePaths
from components.synthesize import run as synthesize
from components.world.backgrounds import SCENE_BACKGROUNDS

RAW = {"synthesize": {"single": 2, "standardize": 2, "multi": 8, "bench_per_subset": 1, "bench_rows": {}},
       "resources": {"workers": 1}}
PARAMS = Params.model_validate(RAW)
NO_DECODE = Params.model_validate({**RAW, "validate": {"decode_images": False}})


@pytest.fixture(scope="module", autouse=True)
def no_data_docs():
    """GX's HTML data docs cost a third of each gate run and say nothing about the verdict
    (the gate already survives their failure); test_validate.py checks they are built."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AbstractDataContext, "build_data_docs", lambda self, *a, **k: None)
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The four datasets, synthesized once; every case plants its fault in a copy."""
    root = tmp_path_factory.mktemp("world")
    synthesize(PARAMS, SynthesizePaths(out=root / "data", reports=root / "grids"))
    return root / "data"


@dataclass
class Fault:
    split: str  # the dataset the gate is run on
    row: str  # the faulty row's id as the report names it ("multi-000001", "multi-000001[k=0]")
    check: str  # the failing expectation's line head: "[samples] expect_... (column)"
    value: str = ""  # a piece of the offending value the line shows
    params: Params = PARAMS


FAULTS: dict[str, Callable[[Path], Fault]] = {}  # each run through the whole gate
ROW_FAULTS: dict[str, Callable[[Path], Fault]] = {}  # each checked on its check column only


def fault(fn):
    FAULTS[fn.__name__] = fn
    return fn


def row_fault(fn):
    ROW_FAULTS[fn.__name__] = fn
    return fn


def status(column: str) -> str:
    return f"[samples] expect_column_values_to_be_in_set ({column})"


# ---- helpers that edit a copy of the data ------------------------------------------------------

def manifest(root: Path, split: str = "multi") -> pd.DataFrame:
    return read_manifest(root / split)


def two_subjects(root: Path, split: str = "multi") -> int:
    """The first row with two subjects (and so two references)."""
    return int(np.flatnonzero(manifest(root, split).n_subjects == 2)[0])


def edit(root: Path, i: int, column: str, value, split: str = "multi") -> str:
    """Set one cell (list cells too) of a manifest; returns that row's id."""
    m = manifest(root, split)
    values = list(m[column])
    values[i] = value
    m[column] = pd.Series(values, index=m.index, dtype=object)
    m.to_parquet(root / split / MANIFEST, index=False)
    return m.id[i]


def edit_json(root: Path, i: int, column: str, change: Callable, entry: int | None = None) -> str:
    """Rewrite a JSON cell (or entry ``entry`` of a JSON list cell) through ``change(parsed)``."""
    cell = manifest(root)[column][i]
    if entry is None:
        return edit(root, i, column, json.dumps(change(json.loads(cell))))
    entries = list(cell)
    entries[entry] = json.dumps(change(json.loads(entries[entry])))
    return edit(root, i, column, entries)


def image(root: Path, i: int, column: str, k: int = 0, split: str = "multi") -> tuple[str, Path]:
    """(manifest path, file) of a row's target, mask or reference k."""
    rel = manifest(root, split)[column][i]
    rel = rel if isinstance(rel, str) else list(rel)[k]
    return rel, root / split / rel


def bench_identity(root: Path) -> str:
    return str(manifest(root, "bench").identities[0][0])


def bench_ref(root: Path) -> str:
    """The benchmark's first reference, relative to its folder."""
    return str(manifest(root, "bench").refs[0][0])


def updated(d: dict, **kw) -> dict:
    """A copy of ``d`` with ``kw`` set."""
    return {**d, **kw}


def with_identity(scene: dict, identity: str) -> dict:
    """A scene (a JSON object) whose first subject is ``identity``."""
    return updated(scene, placements=[updated(scene["placements"][0], identity=identity)] + scene["placements"][1:])


# ---- paths -------------------------------------------------------------------------------------

@fault
def absolute_target_path(root):
    i = two_subjects(root)
    _, path = image(root, i, "target")
    return Fault("multi", edit(root, i, "target", str(path.resolve())), status("target_status"), "is absolute")


@fault
def dotdot_ref_path(root):
    i = two_subjects(root)
    outside = "../single/" + manifest(root, "single").target[0]  # an existing 32x32 RGB PNG
    refs = list(manifest(root).refs[i])
    return Fault("multi", edit(root, i, "refs", [outside] + refs[1:]), status("refs_status"),
                 f"{outside} resolves outside the dataset folder")


@fault
def ref_path_into_bench(root):
    i = two_subjects(root)
    into_bench = "../bench/" + bench_ref(root)
    refs = list(manifest(root).refs[i])
    return Fault("multi", edit(root, i, "refs", refs[:1] + [into_bench]), status("refs_status"),
                 f"{into_bench} resolves outside")


@row_fault
def symlink_out_of_the_dataset(root):
    i = two_subjects(root)
    rel, path = image(root, i, "refs", 0)
    path.unlink()
    path.symlink_to((root / "bench" / bench_ref(root)).resolve())
    return Fault("multi", manifest(root).id[i], status("refs_status"), f"{rel} resolves outside")


@fault
def path_outside_without_decoding(root):
    i = two_subjects(root)
    outside = "../single/" + manifest(root, "single").target[0]
    return Fault("multi", edit(root, i, "target", outside), status("target_status"), "resolves outside",
                 params=NO_DECODE)


@fault
def missing_mask(root):
    i = 1
    rel, path = image(root, i, "mask")
    path.unlink()
    return Fault("multi", manifest(root).id[i], status("mask_status"), f"{rel} missing")


# ---- images ------------------------------------------------------------------------------------

@fault
def truncated_ref(root):
    i = 2
    rel, path = image(root, i, "refs", 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return Fault("multi", manifest(root).id[i], status("refs_status"), f"{rel} undecodable")


@fault
def wrong_size_mask(root):
    i = 3
    rel, path = image(root, i, "mask")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    return Fault("multi", manifest(root).id[i], status("mask_status"), f"{rel} is 16x16, stated 32x32")


@fault
def grayscale_target(root):
    i = 4
    rel, path = image(root, i, "target")
    Image.open(path).convert("L").save(path)
    return Fault("multi", manifest(root).id[i], status("target_status"), f"{rel} is mode L, expected RGB")


@fault
def rgba_ref(root):
    i = 5
    rel, path = image(root, i, "refs", 1)
    Image.open(path).convert("RGBA").save(path)
    return Fault("multi", manifest(root).id[i], status("refs_status"), f"{rel} is mode RGBA")


@fault
def rgb_mask(root):
    i = 6
    rel, path = image(root, i, "mask")
    Image.open(path).convert("RGB").save(path)
    return Fault("multi", manifest(root).id[i], status("mask_status"), f"{rel} is mode RGB, expected L or P")


@fault
def mask_label_beyond_n_subjects(root):
    i = two_subjects(root)
    rel, path = image(root, i, "mask")
    labels = np.asarray(Image.open(path)).copy()
    labels[tuple(np.argwhere(labels == 0)[0])] = 5  # a background pixel: the subjects' boxes stay
    Image.fromarray(labels).save(path)
    return Fault("multi", manifest(root).id[i], status("mask_status"), f"{rel} holds label 5, n_subjects=2")


@row_fault
def box_not_the_masks(root):
    i = two_subjects(root)
    boxes = [[int(v) for v in b] for b in manifest(root).boxes[i]]
    boxes[0][2] -= 1  # still inside the image, one column short of the subject
    return Fault("multi", edit(root, i, "boxes", boxes), status("boxes_status"), f"boxes[0]={boxes[0]}")


# ---- JSON columns and the prompt ---------------------------------------------------------------

@fault
def invalid_json_in_ref_scenes(root):
    i = two_subjects(root)
    entries = list(manifest(root).ref_scenes[i])
    return Fault("multi", edit(root, i, "ref_scenes", entries[:1] + ['{"background": "forest",']),
                 status("ref_scenes_status"), "entry 1: invalid JSON")


@fault
def invalid_json_in_scene(root):
    i = 0
    return Fault("multi", edit(root, i, "scene", "{'placements': []}"), status("scene_status"), "invalid JSON")


@row_fault
def invalid_json_in_claims(root):
    i = 0
    return Fault("multi", edit(root, i, "claims", "[{"), status("claims_status"), "invalid JSON")


@fault
def scene_subject_count(root):
    i = two_subjects(root)
    sid = edit_json(root, i, "scene", lambda s: updated(s, placements=s["placements"][:1]))
    return Fault("multi", sid, status("scene_status"), "1 subject(s), n_subjects=2")


@row_fault
def scene_names_another_subject(root):
    i = two_subjects(root)
    other = str(manifest(root).identities[i][1])
    sid = edit_json(root, i, "scene", lambda s: with_identity(s, other))
    return Fault("multi", sid, status("scene_status"), f"subject 0 is {other!r}")


@row_fault
def scene_background_not_the_rows(root):
    i = 0
    other = next(b for b in SCENE_BACKGROUNDS if b != manifest(root).background[i])
    sid = edit_json(root, i, "scene", lambda s: updated(s, background=other))
    return Fault("multi", sid, status("scene_status"), f"background {other!r}")


@fault
def ref_scenes_count(root):
    i = two_subjects(root)
    sid = edit(root, i, "ref_scenes", list(manifest(root).ref_scenes[i])[:1])
    return Fault("multi", sid, "[samples] expect_column_pair_values_to_be_equal (n_ref_scenes, n_subjects)",
                 "n_ref_scenes=1, n_subjects=2")


@row_fault
def ref_scene_of_another_subject(root):
    i = two_subjects(root)
    other = str(manifest(root).identities[i][1])
    sid = edit_json(root, i, "ref_scenes", lambda s: with_identity(s, other), 0)
    return Fault("multi", sid, status("ref_scenes_status"), f"entry 0 shows [{other!r}]")


@fault
def prompt_names_image_3_of_two(root):
    i = two_subjects(root)
    prompt = manifest(root).prompt[i]
    assert "image 2" in prompt
    return Fault("multi", edit(root, i, "prompt", prompt.replace("image 2", "image 3")), status("prompt_status"),
                 "names image 3, the row has 2 reference(s)")


@row_fault
def claim_about_a_third_subject(root):
    i = two_subjects(root)
    sid = edit_json(root, i, "claims", lambda c: c + [{"type": "size", "subject": 2, "value": "small"}])
    return Fault("multi", sid, status("claims_status"), "names subject 2, n_subjects=2")


@row_fault
def claim_of_another_category(root):
    i = two_subjects(root)
    sid = edit_json(root, i, "claims", lambda c: [updated(x, category="dragon") if x["type"] == "present" else x
                                                  for x in c])
    return Fault("multi", sid, status("claims_status"), "claim 0 says subject 0 is a 'dragon'")


@row_fault
def relation_claim_not_the_scenes(root):
    i = next(i for i, c in enumerate(manifest(root).claims) if '"relation"' in c)
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    sid = edit_json(root, i, "claims", lambda c: [updated(x, value=flip[x["value"]]) if x["type"] == "relation" else x
                                                  for x in c])
    return Fault("multi", sid, status("claims_status"), "relation is")


# ---- the benchmark in training data ------------------------------------------------------------

@fault
def bench_identity_in_identities(root):
    i = two_subjects(root)
    leaked = bench_identity(root)
    sid = edit(root, i, "identities", [leaked] + list(manifest(root).identities[i])[1:])
    return Fault("multi", f"{sid}[k=0]", "[subjects] expect_column_values_to_not_be_in_set (identity)",
                 f"identity={leaked!r}")


@row_fault
def bench_identity_in_the_scene(root):
    i = two_subjects(root)
    leaked = bench_identity(root)
    sid = edit_json(root, i, "scene", lambda s: with_identity(s, leaked))
    return Fault("multi", sid, status("leak_status"), f"scene names benchmark identity {leaked!r}")


@fault
def bench_identity_in_ref_provenance(root):
    i = two_subjects(root)
    leaked = bench_identity(root)
    sid = edit_json(root, i, "ref_scenes", lambda s: with_identity(s, leaked), 1)
    return Fault("multi", sid, status("leak_status"), f"ref_scenes[1] names benchmark identity {leaked!r}")


@row_fault
def bench_sample_as_bootstrapped_source(root):
    """A bootstrapped reference's provenance (bootstrap/pairs.py) drawn from a benchmark scene."""
    i = two_subjects(root)
    source = manifest(root, "bench").id[0]
    sid = edit_json(root, i, "ref_scenes", lambda s: {"generated_by": "models/pretrain", "in_place": False,
                                                      "prompt": "the cat from image 1 in a forest", "similarity": 0.9,
                                                      "background": "forest", "source": source}, 0)
    return Fault("multi", sid, status("leak_status"), f"drawn from benchmark sample {source!r}")


@fault
def bench_image_copied_over_a_ref(root):
    i = two_subjects(root)
    rel, path = image(root, i, "refs", 1)
    bench_target = manifest(root, "bench").target[0]
    shutil.copyfile(root / "bench" / bench_target, path)
    return Fault("multi", manifest(root).id[i], status("leak_status"), f"{rel} is a copy of bench/{bench_target}")


@fault
def bench_image_in_a_bootstrapped_dataset(root):
    """The same gate on a bootstrapped (multisubject) dataset: a target copied from a benchmark reference."""
    shutil.copytree(root / "multi", root / "multisubject")
    m = manifest(root, "multisubject")
    m["split"] = "multisubject"
    m.to_parquet(root / "multisubject" / MANIFEST, index=False)
    rel, path = image(root, 0, "target", split="multisubject")
    shutil.copyfile(root / "bench" / bench_ref(root), path)
    return Fault("multisubject", m.id[0], status("leak_status"), f"{rel} is a copy of bench/{bench_ref(root)}")


# ---- the columns' own rules --------------------------------------------------------------------

@fault
def duplicated_id(root):
    dup = manifest(root).id[0]
    edit(root, 1, "id", dup)
    return Fault("multi", f"{dup}; {dup}", "[samples] expect_column_values_to_be_unique (id)")


@fault
def unknown_category(root):
    i = 0
    sid = edit(root, i, "categories", ["dragon"] + list(manifest(root).categories[i])[1:])
    return Fault("multi", f"{sid}[k=0]", "[subjects] expect_column_values_to_be_in_set (category)", "category='dragon'")


@fault
def category_not_the_identitys(root):
    i = two_subjects(root)
    cats = list(manifest(root).categories[i])
    sid = edit(root, i, "categories", [cats[1], cats[1]])
    check = "[subjects] expect_column_pair_values_to_be_equal (category, identity_category)"
    return Fault("multi", f"{sid}[k=0]", check, f"category={cats[1]!r}")


@fault
def box_outside_the_image(root):
    i = two_subjects(root)
    boxes = [list(b) for b in manifest(root).boxes[i]]
    boxes[1][2] = 37
    sid = edit(root, i, "boxes", boxes)
    return Fault("multi", f"{sid}[k=1]", "[subjects] expect_column_pair_values_a_to_be_greater_than_b (width, x1)",
                 "width=32, x1=37")


@fault
def list_length_mismatch(root):
    i = two_subjects(root)
    sid = edit(root, i, "categories", list(manifest(root).categories[i])[:1])
    return Fault("multi", sid, "[samples] expect_column_pair_values_to_be_equal (n_categories, n_subjects)",
                 "n_categories=1, n_subjects=2")


@fault
def wrong_split(root):
    i = 3
    return Fault("multi", edit(root, i, "split", "bench"), "[samples] expect_column_values_to_be_in_set (split)",
                 "split='bench'")


@fault
def wrong_subset(root):
    i = 4
    return Fault("multi", edit(root, i, "subset", "single"), "[samples] expect_column_values_to_be_in_set (subset)",
                 "subset='single'")


# ---- the tests ---------------------------------------------------------------------------------

def copy(data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data, tmp_path / "data"))


def test_the_corpus_is_large_enough():
    assert len(FAULTS) >= 20 and not set(FAULTS) & set(ROW_FAULTS)


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_planted_fault_fails_the_gate_naming_its_row_and_check(name, data, tmp_path):
    root = copy(data, tmp_path)
    f = FAULTS[name](root)
    with pytest.raises(DataValidationError) as err:
        validate_datasets(f.params, {f.split: root / f.split}, tmp_path / "reports", load_benchmark(root / "bench"))
    lines = [ln.strip() for ln in str(err.value).splitlines() if ln.strip().startswith(f"- {f.check}:")]
    assert len(lines) == 1, f"no {f.check!r} in:\n{err.value}"
    assert re.search(rf"failing row\(s\): {re.escape(f.row)}( \(|;|$)", lines[0]), lines[0]
    assert f.value in lines[0], lines[0]


@pytest.mark.parametrize("name", list(ROW_FAULTS))
def test_a_planted_fault_fails_its_check_column(name, data, tmp_path):
    root = copy(data, tmp_path)
    f = ROW_FAULTS[name](root)
    column = re.fullmatch(r"\[samples\] expect_column_values_to_be_in_set \((\w+)\)", f.check)[1]
    frame = samples_frame(manifest(root, f.split), root / f.split, f.params.validate_.decode_images,
                          load_benchmark(root / "bench"))
    failing = frame.loc[frame[column] != OK, ["id", column]].values.tolist()
    assert len(failing) == 1 and failing[0][0] == f.row and f.value in failing[0][1], failing


def test_the_clean_copy_passes_every_check(data, tmp_path):
    root = copy(data, tmp_path)
    for rel in manifest(root)["mask"]:  # a palette PNG holds the same label indices as an L one
        path = root / "multi" / rel
        labels = np.asarray(Image.open(path))
        palette = Image.new("P", labels.shape[::-1])
        palette.frombytes(labels.tobytes())
        palette.putpalette([v for k in range(256) for v in (k, k, k)])
        palette.save(path)
        reread = Image.open(path)
        assert reread.mode == "P" and np.array_equal(np.asarray(reread), labels)
    metrics = validate_datasets(PARAMS, {s: root / s for s in SPLITS}, tmp_path / "reports",
                                load_benchmark(root / "bench"))
    assert metrics["success"] and all(metrics[s]["failed"] == 0 for s in SPLITS)
    # the leakage checks run on training data only
    results = {s: json.loads((tmp_path / "reports" / f"{s}.json").read_text()) for s in SPLITS}
    leak = {s: any(r["expectation_config"]["kwargs"].get("column") == "leak_status"
                   for r in results[s]["samples"]["results"]) for s in SPLITS}
    assert leak == {"single": True, "standardize": True, "multi": True, "bench": False, "wild": False, "serial": False}
