"""The validate stage on a tiny real dataset: clean data passes untouched, and each planted
fault (in a copy of the data) is caught with the failing sample id in the error message."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from components.config import Params
from components.data.manifest import MANIFEST, SPLITS, read_manifest
from components.pipeline.stage import EXIT_DATA_INVALID, DataValidationError
from components.synthesize import SynthesizePaths
from components.synthesize import run as synthesize
from components.validate import ValidatePaths, main, run

RAW = {"synthesize": {"single": 12, "standardize": 6, "multi": 12, "bench_per_subset": 2, "bench_rows": {}},
       "resources": {"workers": 1}}
PARAMS = Params.model_validate(RAW)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The four datasets, synthesized once for the module; tests that plant faults copy it."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(PARAMS, SynthesizePaths(out=root / "data", reports=root / "grids"))
    return root / "data"


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    """One validation of the untouched data: (metrics, reports folder, hashes before, after)."""
    before = _hashes(data)
    reports = tmp_path_factory.mktemp("clean") / "reports"
    metrics = run(PARAMS, ValidatePaths(data=data, reports=reports))
    return metrics, reports, before, _hashes(data)


def _edit_manifest(root: Path, split: str, column: str, row: int, value) -> str:
    """Set one cell of a manifest (list cells too) and return that row's id."""
    m = read_manifest(root / split)
    values = list(m[column])
    values[row] = value
    m[column] = pd.Series(values, index=m.index, dtype=m[column].dtype if column == "id" else object)
    m.to_parquet(root / split / MANIFEST, index=False)
    return m["id"][row]


def _row(root: Path, split: str, i: int) -> dict:
    return read_manifest(root / split).iloc[i].to_dict()


def test_clean_data_passes(clean):
    metrics, reports, _, _ = clean
    assert metrics["success"] is True
    for split in SPLITS:
        m = metrics[split]
        assert m["success"] and m["failed"] == 0 and m["expectations"] > 20 and m["rows"] > 0
        result = json.loads((reports / f"{split}.json").read_text())
        assert result["samples"]["success"] and result["subjects"]["success"]
    # The leakage check is in every training split's subjects suite and nowhere else.
    leak = {s: any(r["expectation_config"]["type"] == "expect_column_values_to_not_be_in_set"
                   for r in json.loads((reports / f"{s}.json").read_text())["subjects"]["results"]) for s in SPLITS}
    assert leak == {"single": True, "standardize": True, "multi": True, "bench": False, "wild": False, "serial": False}
    assert "**PASS**" in (reports / "summary.md").read_text()
    assert (reports / "html" / "index.html").is_file()
    assert "FAIL" not in (reports / "report.html").read_text()


def test_validation_never_modifies_the_data(clean):
    _, _, before, after = clean
    assert before and before == after


@pytest.fixture(scope="module")
def planted(data, tmp_path_factory):
    """One copy of the data with six faults planted in distinct rows, validated once through
    the stage's command line (GX costs seconds per run, so the faults share it):
    (exit code, stderr, {fault: (sample id, detail)}, reports folder, metrics file)."""
    tmp = tmp_path_factory.mktemp("planted")
    root = Path(shutil.copytree(data, tmp / "data"))
    faults = {}

    row = _row(root, "multi", 3)  # a missing reference PNG
    (root / "multi" / row["refs"][1]).unlink()
    faults["missing"] = (row["id"], f"(refs_status='{row['refs'][1]} missing')")

    row = _row(root, "single", 2)  # a target PNG cut in half
    path = root / "single" / row["target"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    faults["truncated"] = (row["id"], f"(target_status='{row['target']} undecodable")

    row = _row(root, "standardize", 1)  # a target of the wrong size
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "standardize" / row["target"])
    faults["size"] = (row["id"], f"(target_status='{row['target']} is 16x16, stated 32x32')")

    row = _row(root, "multi", 4)  # a box past the right edge of the target
    boxes = [list(b) for b in row["boxes"]]
    boxes[1][2] = row["width"] + 5
    _edit_manifest(root, "multi", "boxes", 4, boxes)
    faults["box"] = (f"{row['id']}[k=1]", f"(width=32, x1={row['width'] + 5})")

    leaked = str(_row(root, "bench", 0)["identities"][0])  # a benchmark identity in training data
    row = _row(root, "multi", 5)
    _edit_manifest(root, "multi", "identities", 5, [leaked] + list(row["identities"])[1:])
    faults["leak"] = (f"{row['id']}[k=0]", f"(identity='{leaked}')")

    dup = _row(root, "single", 0)["id"]  # a duplicated sample id
    _edit_manifest(root, "single", "id", 1, dup)
    faults["duplicate"] = (dup, "")

    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(RAW))
    reports, metrics_file, err = tmp / "reports", tmp / "metrics.json", io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--params", str(params_file), "--data", str(root), "--reports", str(reports),
                     "--metrics", str(metrics_file)])
    return code, err.getvalue(), faults, reports, metrics_file


def _line(message: str, header: str) -> str:
    """The one line of the error message that starts with ``header``."""
    lines = [ln for ln in message.splitlines() if ln.strip().startswith(header)]
    assert len(lines) == 1, f"{header!r} in:\n{message}"
    return lines[0]


def test_stage_exits_3_and_still_writes_reports(planted):
    code, err, _, reports, metrics_file = planted
    assert code == EXIT_DATA_INVALID and not metrics_file.exists()
    assert "validate: data validation failed" in err
    for split in SPLITS:
        assert (reports / f"{split}.json").is_file()
    assert "**FAIL**" in (reports / "summary.md").read_text()
    assert "FAIL" in (reports / "report.html").read_text() and (reports / "html" / "index.html").is_file()
    assert json.loads((reports / "multi.json").read_text())["samples"]["success"] is False


def test_only_the_planted_faults_fail(planted):
    _, err, _, _, _ = planted
    failed = sorted(ln.strip().split(":")[0] for ln in err.splitlines() if ln.startswith("  - "))
    assert failed == sorted([
        "- [samples] expect_column_values_to_be_in_set (refs_status)",  # missing ref
        "- [subjects] expect_column_pair_values_a_to_be_greater_than_b (width, x1)",  # box
        "- [samples] expect_column_values_to_be_in_set (boxes_status)",  # box, no longer the mask's
        "- [subjects] expect_column_values_to_not_be_in_set (identity)",  # leak
        # leak: the row's scene, reference scene and category still name the subject it replaced
        "- [samples] expect_column_values_to_be_in_set (scene_status)",
        "- [samples] expect_column_values_to_be_in_set (ref_scenes_status)",
        "- [subjects] expect_column_pair_values_to_be_equal (category, identity_category)",
        "- [samples] expect_column_values_to_be_in_set (target_status)",  # truncated
        "- [samples] expect_column_values_to_be_unique (id)",  # duplicate
        "- [subjects] expect_compound_columns_to_be_unique (sample_id, k)",  # duplicate, per subject
        "- [samples] expect_column_values_to_be_in_set (target_status)",  # wrong size
    ])
    assert "bench:" not in err


def test_missing_reference_is_caught(planted):
    _, err, faults, _, _ = planted
    sid, detail = faults["missing"]
    line = _line(err, "- [samples] expect_column_values_to_be_in_set (refs_status)")
    assert f"1 failing row(s): {sid} {detail}" in line


def test_truncated_png_is_caught(planted):
    _, err, faults, _, _ = planted
    sid, detail = faults["truncated"]
    assert f"{sid} {detail}" in err.split("\nstandardize:")[0].split("single:")[1]


def test_wrong_image_size_is_caught(planted):
    _, err, faults, _, _ = planted
    sid, detail = faults["size"]
    assert f"1 failing row(s): {sid} {detail}" in err.split("standardize:")[1]


def test_box_outside_the_image_is_caught(planted):
    _, err, faults, _, _ = planted
    sid, detail = faults["box"]
    line = _line(err, "- [subjects] expect_column_pair_values_a_to_be_greater_than_b (width, x1)")
    assert f"1 failing row(s): {sid} {detail}" in line


def test_leaked_benchmark_identity_is_caught(planted):
    _, err, faults, _, _ = planted
    sid, detail = faults["leak"]
    line = _line(err, "- [subjects] expect_column_values_to_not_be_in_set (identity)")
    assert f"1 failing row(s): {sid} {detail}" in line


def test_duplicate_id_is_caught(planted):
    _, err, faults, _, _ = planted
    sid, _ = faults["duplicate"]
    assert f"2 failing row(s): {sid}; {sid}" in _line(err, "- [samples] expect_column_values_to_be_unique (id)")


def test_without_decoding_only_existence_is_checked(data, tmp_path):
    root = Path(shutil.copytree(data, tmp_path / "data"))
    truncated = _row(root, "single", 2)
    (root / "single" / truncated["target"]).write_bytes(b"not a png")
    missing = _row(root, "bench", 0)
    (root / "bench" / missing["mask"]).unlink()
    params = Params.model_validate({**RAW, "validate": {"decode_images": False}})
    reports = tmp_path / "reports"
    with pytest.raises(DataValidationError) as err:
        run(params, ValidatePaths(data=root, reports=reports))
    msg = str(err.value)
    assert f"{missing['id']} (mask_status='{missing['mask']} missing')" in msg
    assert truncated["id"] not in msg and "single:" not in msg
    assert (reports / "summary.md").is_file()
