"""The code's lineage and shape: every DVC stage depends on all the code its command can import
(so a changed sampler or judge makes DVC rerun what it feeds), no stage imports another, stage
modules stay thin and no module grows past 400 lines."""
from __future__ import annotations

import ast

import pytest

from components.pipeline import lineage
from tests.conftest import REPO

STAGES = lineage.stages(REPO)
STAGE_FILES = {f"components/{s.cmd.split('python -m components.', 1)[1].split()[0]}.py" for s in STAGES}


@pytest.mark.parametrize("info", STAGES, ids=[s.name for s in STAGES])
def test_a_stages_deps_cover_every_module_its_command_imports(info):
    assert lineage.uncovered_imports(info, REPO) == [], f"dvc.yaml: add these to {info.name}'s deps"


@pytest.mark.parametrize("info", STAGES, ids=[s.name for s in STAGES])
def test_no_stage_imports_another(info):
    module = info.cmd.split("python -m ", 1)[1].split()[0]
    own = f"components/{module.split('.', 1)[1]}.py"
    assert lineage.import_closure(module, REPO) & STAGE_FILES == {own}


def test_the_exempt_package_markers_hold_nothing_but_a_docstring():
    for rel in lineage.NOT_LINEAGE:
        if rel.endswith("__init__.py"):
            body = ast.parse((REPO / rel).read_text()).body
            assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), rel


def test_the_closure_follows_relative_lazy_and_package_imports(tmp_path):
    pkg = tmp_path / "components"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .inner import x\n")
    (pkg / "sub" / "inner.py").write_text("x = 1\n")
    (pkg / "sub" / "lazy.py").write_text("y = 2\n")
    (pkg / "unused.py").write_text("")
    (pkg / "stage.py").write_text("import os\nfrom .sub import x\n\ndef f():\n    from .sub import lazy\n")
    assert lineage.import_closure("components.stage", tmp_path) == {
        "components/__init__.py", "components/stage.py", "components/sub/__init__.py", "components/sub/inner.py",
        "components/sub/lazy.py"}


def test_modules_stay_small_and_stages_thin():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "components").rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > 400} == {}
    assert {f: sizes[f] for f in STAGE_FILES if sizes[f] > 150} == {}
