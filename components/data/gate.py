"""The data quality gate: Great Expectations suites over a dataset's manifest and its subjects,
used by the validate stage on every synthesized dataset and by the bootstrapping stage on the
pairs it builds.

Per dataset two frames are validated, each with its own GX suite:
- samples:  the manifest, one row per sample, plus check columns computed from the files and the
            row itself (``checks.py``: paths inside the dataset, PNGs decoding at the stated size
            and mode, mask labels and boxes, scene / claims / ref_scenes / prompt agreeing with
            the row, list lengths, and on training data no trace of the benchmark)
- subjects: ``manifest.subjects_frame`` plus the image size, one row per (sample, subject)
            (boxes inside the image, known categories, no benchmark identity in training data)

The data is only read, never written. Reports (GX's JSON results, a Markdown summary, GX data
docs and a small failing-ids table) go to the reports folder; any failed expectation then raises
``DataValidationError`` naming the expectation and the failing sample ids."""
from __future__ import annotations

import os

# Telemetry off, set before GX is imported so no GX code path sees it unset.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import html  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from .. import world  # noqa: E402
from ..config import Params  # noqa: E402
from ..io import write_json_atomic, write_text_atomic  # noqa: E402
from ..pipeline.stage import DataValidationError  # noqa: E402
from .checks import CHECK_COLUMNS, OK, Benchmark, row_checks  # noqa: E402
from .manifest import COLUMNS, DERIVED_SPLITS, TASK_SPLITS, TRAIN_SPLITS, read_manifest, subjects_frame  # noqa: E402

log = logging.getLogger(__name__)
E = gx.expectations
INT_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
STR_COLUMNS = ("id", "split", "subset", "prompt", "background", "target", "mask", "scene", "claims")
LIST_COLUMNS = ("refs", "categories", "identities", "boxes", "ref_boxes", "ref_scenes")
COUNT_COLUMNS = tuple(f"n_{c}" for c in LIST_COLUMNS)  # n_refs, n_categories, ...
BOX_COLUMNS = ("x0", "y0", "x1", "y1", "ref_x0", "ref_y0", "ref_x1", "ref_y1")
HTML_SITE = "validate"


def _with_all_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """A copy with absent manifest columns filled with None, so the derived checks can be
    computed anyway; GX still sees the original columns and reports the absent ones."""
    m = manifest.copy()
    for c in COLUMNS:
        if c not in m.columns:
            m[c] = None
    return m


def _length(v) -> int:
    return 0 if v is None or isinstance(v, (str, float)) else len(v)


def guarded(split: str) -> bool:
    """True for training data: the benchmark must leave no trace in it."""
    return split in TRAIN_SPLITS or split in DERIVED_SPLITS


def samples_frame(manifest: pd.DataFrame, root: Path, decode: bool, bench: Benchmark | None = None) -> pd.DataFrame:
    """The manifest plus check columns: the length of every list column (``n_refs`` ...) and
    ``checks.row_checks`` ("ok" or the first problem) of every row; ``bench`` for training data."""
    derived: dict[str, list] = {c: [] for c in COUNT_COLUMNS + CHECK_COLUMNS}
    folder = os.path.realpath(root)
    for rec in _with_all_columns(manifest).to_dict("records"):
        for c in LIST_COLUMNS:
            derived[f"n_{c}"].append(_length(rec[c]))
        for c, status in row_checks(rec, folder, decode, bench).items():
            derived[c].append(status)
    frame = manifest.copy()
    for c, values in derived.items():
        frame[c] = pd.Series(values, index=frame.index, dtype="int64" if c in COUNT_COLUMNS else "str")
    return frame


def subjects_with_size(manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest.subjects_frame`` plus the sample's width and height, so the box bounds are
    column-pair expectations."""
    m = _with_all_columns(manifest)
    subj = subjects_frame(m)
    # A dict, not a merge: a duplicated sample id must not multiply the subject rows.
    for c in ("width", "height"):
        size = dict(zip(m["id"], m[c]))
        subj[c] = [size.get(s) for s in subj["sample_id"]]
    # The identity id starts with its category ("cat|red|blue|solid|none").
    subj["identity_category"] = [i.split("|", 1)[0] if isinstance(i, str) else None for i in subj["identity"]]
    return subj


def samples_suite(split: str, params: Params) -> gx.ExpectationSuite:
    """The expectations on one dataset's samples frame."""
    res = params.synthesize.resolution
    allowed = list(world.TASKS) if split in TASK_SPLITS else [split]
    # One schema expectation, not one per column: GX costs ~7 ms per expectation whatever the data.
    ex = [E.ExpectTableColumnsToMatchSet(column_set=list(COLUMNS), exact_match=False)]
    ex += [E.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in STR_COLUMNS]
    ex += [E.ExpectColumnValuesToBeInTypeList(column=c, type_list=INT_TYPES) for c in ("width", "height", "n_subjects")]
    ex += [E.ExpectColumnValuesToNotBeNull(column=c) for c in COLUMNS]
    ex += [
        E.ExpectTableRowCountToBeBetween(min_value=params.validate_.min_samples),
        E.ExpectColumnValuesToBeUnique(column="id"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=[split]),
        E.ExpectColumnValuesToBeInSet(column="subset", value_set=allowed),
        E.ExpectColumnValuesToBeInSet(column="width", value_set=[res]),
        E.ExpectColumnValuesToBeInSet(column="height", value_set=[res]),
        E.ExpectColumnValuesToBeBetween(column="n_subjects", min_value=1),
    ]
    ex += [E.ExpectColumnPairValuesToBeEqual(column_A=c, column_B="n_subjects") for c in COUNT_COLUMNS]
    # leak_status is "ok" everywhere but in training data checked against a benchmark.
    ex += [E.ExpectColumnValuesToBeInSet(column=c, value_set=[OK]) for c in CHECK_COLUMNS
           if c != "leak_status" or guarded(split)]
    return gx.ExpectationSuite(name=f"{split}.samples", expectations=ex)


def subjects_suite(split: str, bench_identities: frozenset[str]) -> gx.ExpectationSuite:
    """The expectations on one dataset's subjects frame; on a training split also the leakage
    check: no benchmark identity may appear in it."""
    # No not-null check per box column: a missing x0 fails "x1 > x0" and a missing x1 fails
    # "width >= x1" below (GX skips a pair only when both of its values are missing).
    ex = [E.ExpectColumnValuesToNotBeNull(column=c) for c in ("sample_id", "k", "category", "identity", "ref")]
    ex += [
        E.ExpectCompoundColumnsToBeUnique(column_list=["sample_id", "k"]),
        E.ExpectColumnValuesToBeInSet(column="category", value_set=list(world.CATEGORIES)),
        E.ExpectColumnPairValuesToBeEqual(column_A="category", column_B="identity_category"),
    ]
    # 0 <= x0 < x1 <= width, the same for y, in the target and in the reference; the reference
    # is rendered at the sample's size, so the same bound applies.
    for p in ("", "ref_"):
        for lo, hi, size in (("x0", "x1", "width"), ("y0", "y1", "height")):
            ex += [
                E.ExpectColumnValuesToBeBetween(column=p + lo, min_value=0),
                E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=p + hi, column_B=p + lo),
                E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=size, column_B=p + hi, or_equal=True),
            ]
    if guarded(split) and bench_identities:
        ex.append(E.ExpectColumnValuesToNotBeInSet(column="identity", value_set=sorted(bench_identities)))
    return gx.ExpectationSuite(name=f"{split}.subjects", expectations=ex)


def _context(html_dir: Path):
    """An in-memory GX context (nothing written to the project) with one data docs site."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bar per suite
    ctx.add_data_docs_site(HTML_SITE, {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(html_dir).resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return ctx


def _validate(ctx, frame: pd.DataFrame, suite: gx.ExpectationSuite, index_columns: list[str]):
    """Run ``suite`` on ``frame``; COMPLETE results name every failing row by ``index_columns``."""
    name = suite.name
    batch = ctx.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=ctx.suites.add(suite)))
    # ValidationDefinition.run (unlike batch.validate) stores the result, which data docs render.
    return vd.run(batch_parameters={"dataframe": frame}, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": index_columns})


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _row_label(row: dict, index_columns: list[str]) -> str:
    """'multi-000003' or 'multi-000003[k=1]', followed by the offending values."""
    ids = [_plain(row.get(c)) for c in index_columns]
    label = str(ids[0]) + "".join(f"[{c}={v}]" for c, v in zip(index_columns[1:], ids[1:]))
    values = ", ".join(f"{k}={_plain(v)!r}" for k, v in row.items() if k not in index_columns)
    return f"{label} ({values})" if values else label


def describe(result, report_rows: int) -> list[dict]:
    """Every expectation of a GX result: type, column(s), success and, when it failed, up to
    ``report_rows`` failing row ids and a one-line detail."""
    out = []
    for r in result.results:
        kw = r.expectation_config.kwargs
        columns = kw.get("column_list") or [kw[c] for c in ("column", "column_A", "column_B") if c in kw]
        res = r.result or {}
        rows = res.get("unexpected_index_list") or []
        index_columns = res.get("unexpected_index_column_names") or []
        ids = [_row_label(row, index_columns) for row in rows[:report_rows]]
        info = r.exception_info or {}
        # A raised metric nests its info under the metric's id; an unraised one is flat.
        errors = [i.get("exception_message") for i in info.values()
                  if isinstance(i, dict) and i.get("raised_exception")]
        missing = (res.get("details") or {}).get("mismatched", {}).get("missing")
        if r.success:
            detail = ""
        elif rows:
            detail = f"{len(rows)} failing row(s): " + "; ".join(ids) + (" ..." if len(rows) > report_rows else "")
        elif errors or info.get("raised_exception"):
            detail = f"error: {errors[0] if errors else info.get('exception_message')}"
        elif missing:
            detail = f"missing column(s) {missing}"
        else:
            detail = f"observed {res.get('observed_value')!r}"
        out.append({"expectation": r.expectation_config.type, "column": ", ".join(columns), "success": bool(r.success),
                    "ids": ids, "detail": detail})
    return out


def _report_html(rows: list[tuple[str, str, str, str, bool, str]]) -> str:
    """A self-contained table of every expectation, beside GX's own data docs in html/."""
    e = html.escape
    body = "\n".join(
        f"<tr class={'ok' if ok else 'fail'}><td>{e(d)}</td><td>{e(f)}</td><td>{e(t)}</td><td>{e(c)}</td>"
        f"<td>{'pass' if ok else 'FAIL'}</td><td>{e(ids)}</td></tr>" for d, f, t, c, ok, ids in rows)
    return ("<!doctype html><meta charset=utf-8><title>validate</title><style>td{padding:2px 8px;font:13px monospace}"
            ".fail{background:#fdd}</style><h1>Data validation</h1><p>Full results: <a href='html/index.html'>"
            "Great Expectations data docs</a></p><table><tr><th>dataset</th><th>frame</th><th>expectation</th>"
            f"<th>column</th><th>result</th><th>failing ids</th></tr>\n{body}\n</table>\n")


def validate_datasets(params: Params, datasets: dict[str, Path], reports: Path, bench: Benchmark) -> dict:
    """The gate on any datasets ``{split: folder}``, training ones checked against ``bench``
    (``checks.load_benchmark``): GX results, summary and data docs go to ``reports``; raises
    DataValidationError listing failed expectations and row ids. The validate stage runs it on
    the synthesized splits, later stages on the datasets they build."""
    cfg, t0 = params.validate_, time.perf_counter()
    reports.mkdir(parents=True, exist_ok=True)
    html_dir = reports / "html"
    shutil.rmtree(html_dir, ignore_errors=True)  # stale runs would otherwise stay listed in the docs
    manifests, unreadable = {}, {}
    for split, folder in datasets.items():
        try:
            manifests[split] = read_manifest(folder)
        except Exception as e:  # noqa: BLE001 - a missing or corrupt manifest is a validation failure
            unreadable[split] = f"manifest unreadable: {type(e).__name__}: {e}"

    ctx = _context(html_dir)
    metrics: dict = {}
    problems: dict[str, list[str]] = {}
    table: list = []
    for split in datasets:
        if split in unreadable:
            write_json_atomic(reports / f"{split}.json", {"success": False, "error": unreadable[split]})
            metrics[split] = {"expectations": 0, "failed": 1, "success": False, "rows": 0}
            problems[split] = [unreadable[split]]
            continue
        m = manifests[split]
        frames = {
            "samples": (samples_frame(m, datasets[split], cfg.decode_images, bench if guarded(split) else None),
                        samples_suite(split, params), ["id"]),
            "subjects": (subjects_with_size(m), subjects_suite(split, bench.identities), ["sample_id", "k"]),
        }
        results = {kind: _validate(ctx, frame, suite, idx) for kind, (frame, suite, idx) in frames.items()}
        write_json_atomic(reports / f"{split}.json", {k: r.to_json_dict() for k, r in results.items()})
        n = failed = 0
        for kind, result in results.items():
            described = describe(result, cfg.report_rows)
            n += len(described)
            fails = [d for d in described if not d["success"]]
            failed += len(fails)
            problems.setdefault(split, []).extend(
                f"[{kind}] {d['expectation']}" + (f" ({d['column']})" if d["column"] else "") + f": {d['detail']}"
                for d in fails)
            table += [(split, kind, d["expectation"], d["column"], d["success"], d["detail"]) for d in described]
        metrics[split] = {"expectations": n, "failed": failed, "success": failed == 0, "rows": len(m),
                          "subjects": len(frames["subjects"][0])}
    metrics["success"] = all(metrics[s]["success"] for s in datasets)

    try:  # the docs are a convenience: a rendering bug must not hide the verdict
        ctx.build_data_docs(site_names=[HTML_SITE])
    except Exception as e:  # noqa: BLE001
        log.warning("GX data docs not built: %s", e)
    write_text_atomic(reports / "report.html", _report_html(table))
    summary = ["# Data validation", "", f"Overall: **{'PASS' if metrics['success'] else 'FAIL'}**", "",
               "| dataset | rows | expectations | failed | result |", "|---|---|---|---|---|"]
    summary += [f"| {s} | {metrics[s]['rows']} | {metrics[s]['expectations']} | {metrics[s]['failed']} | "
                f"{'pass' if metrics[s]['success'] else 'FAIL'} |" for s in datasets]
    for split, lines in problems.items():
        if lines:
            summary += ["", f"## {split}", ""] + [f"- {line}" for line in lines]
    write_text_atomic(reports / "summary.md", "\n".join(summary) + "\n")
    metrics["timings"] = {"seconds": round(time.perf_counter() - t0, 3)}

    if not metrics["success"]:
        raise DataValidationError("\n".join(
            f"{split}: {len(lines)} failed expectation(s)\n" + "\n".join(f"  - {line}" for line in lines)
            for split, lines in problems.items() if lines) + f"\nreports: {reports}")
    return metrics
