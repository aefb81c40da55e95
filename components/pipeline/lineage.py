"""DVC as the judge of staleness and the record of lineage (dvc.lock).

Thin helpers over DVC's Python API, used by the Prefect flow and the CLI alike, so a stage is
reproduced the same way whoever starts it.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import chdir, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@dataclass
class StageInfo:
    """A stage of dvc.yaml: its command, the params sections/keys it reads, deps and outs."""

    name: str
    cmd: str
    params: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)


_DVC_LOCK = threading.Lock()


@contextmanager
def _repo(root: str | Path):
    """DVC's Repo for ``root``, entered with ``root`` as the working directory: parts of DVC
    (run cache, output paths) resolve against the cwd whatever root the Repo was given. The
    cwd is process-wide, so DVC calls are serialised."""
    from dvc.repo import Repo

    with _DVC_LOCK, chdir(Path(root).resolve()), Repo(str(Path(root).resolve())) as repo:
        yield repo


def _target(root: str | Path, name: str) -> str:
    # Absolute: DVC resolves a bare stage name against the process's cwd, not the repo root.
    return f"{Path(root).resolve() / 'dvc.yaml'}:{name}"


def _paths(entries) -> list[str]:
    out = []
    for e in entries or []:
        out.extend(e.keys() if isinstance(e, dict) else [e])
    return [str(p) for p in out]


def _params(entries) -> list[str]:
    keys = []
    for e in entries or []:
        if isinstance(e, dict):  # {params file: [keys]}
            for v in e.values():
                keys.extend(v)
        else:
            keys.append(e)
    return keys


def stages(root: str | Path) -> list[StageInfo]:
    """The stages of dvc.yaml in an order where every stage follows the ones it depends on."""
    doc = yaml.safe_load((Path(root) / "dvc.yaml").read_text())
    raw = doc.get("stages", {})
    infos = {
        name: StageInfo(name, s["cmd"] if isinstance(s["cmd"], str) else " && ".join(s["cmd"]),
                        _params(s.get("params")), _paths(s.get("deps")), _paths(s.get("outs")),
                        _paths(s.get("metrics")))
        for name, s in raw.items()
    }
    produced = {o: n for n, i in infos.items() for o in i.outs + i.metrics}
    for info in infos.values():
        info.upstream = sorted({produced[d] for d in info.deps if d in produced})
    ordered, seen = [], set()

    def visit(name, trail=()):
        if name in seen:
            return
        if name in trail:
            raise ValueError(f"dvc.yaml: cycle through stages {' -> '.join(trail + (name,))}")
        for up in infos[name].upstream:
            visit(up, trail + (name,))
        seen.add(name)
        ordered.append(infos[name])

    for name in infos:
        visit(name)
    return ordered


def status(root: str | Path, targets: list[str] | None = None) -> dict[str, list[str]]:
    """Stale stages and why, as readable lines ({} when everything is up to date)."""
    with _repo(root) as repo:
        raw = repo.status(targets=[_target(root, t) for t in targets] if targets else None)
    out: dict[str, list[str]] = {}
    for name, changes in raw.items():
        name = name.split(":")[-1]
        reasons = []
        for change in changes:
            if isinstance(change, str):
                reasons.append(change)
                continue
            for kind, detail in change.items():
                if isinstance(detail, dict):
                    for path, what in detail.items():
                        if isinstance(what, dict):  # params: {file: {key: modified}}
                            reasons.extend(f"{kind}: {path}: {k} {v}" for k, v in what.items())
                        else:
                            reasons.append(f"{kind}: {path} {what}")
                else:
                    reasons.append(f"{kind}: {detail}")
        out[name] = reasons
    return out


def reproduce(root: str | Path, name: str, env: dict[str, str] | None = None, force: bool = False) -> bool:
    """Run stage ``name`` if DVC finds it stale (or ``force``); True if it was reproduced.

    The command runs with this interpreter's folder first on PATH, so ``python`` in dvc.yaml is
    the one subjectflow runs under even when its virtualenv is not activated.
    """
    bindir = str(Path(sys.executable).parent)
    run_env = {"PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
    with _repo(root) as repo:
        done = repo.reproduce(_target(root, name), single_item=True, force=force, run_env=run_env)
    return bool(done)


def stage_failure_code(exc: BaseException) -> int | None:
    """The exit code of the stage command behind a DVC reproduction error, if any."""
    from dvc.stage.exceptions import StageCmdFailedError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StageCmdFailedError):
            return getattr(exc, "returncode", None) or _code_from_message(str(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _code_from_message(msg: str) -> int | None:
    import re

    m = re.search(r"exited with (-?\d+)", msg)
    return int(m.group(1)) if m else None


def _lock_stages(root: str | Path) -> dict:
    lock = Path(root) / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}


def _md5s(stages: list[dict], kind: str) -> dict[str, str]:
    return {e["path"]: e.get("md5", "") for stage in stages for e in stage.get(kind, [])}


def _locked(root: str | Path, name: str, kind: str) -> dict[str, str]:
    return _md5s([_lock_stages(root).get(name, {})], kind)


def locked_outs(root: str | Path, name: str | None = None) -> dict[str, str]:
    """{out path: md5} recorded for stage ``name`` in dvc.lock ({} before its first run);
    without ``name``, the outputs of every locked stage (dvc.lock read once)."""
    if name is not None:
        return _locked(root, name, "outs")
    return _md5s(list(_lock_stages(root).values()), "outs")


def locked_deps(root: str | Path, name: str) -> dict[str, str]:
    """{dep path: md5} recorded for stage ``name`` in dvc.lock."""
    return _locked(root, name, "deps")


REMOTE = "storage"  # the name of the remote pipeline.dvc_remote configures


def configure_remote(root: str | Path, url: str | None, endpoint_url: str | None = None) -> bool:
    """Make ``url`` (with ``endpoint_url`` for an S3-compatible store) the project's default DVC
    remote, named ``storage``, in .dvc/config (a file to commit: a clone then pulls from it);
    nothing when ``url`` is None or it already is. True if the config changed."""
    if url is None:
        return False
    wanted = {"url": url, **({"endpointurl": endpoint_url} if endpoint_url else {})}
    with _repo(root) as repo:
        current = repo.config.get("remote", {}).get(REMOTE, {})
        if repo.config.get("core", {}).get("remote") == REMOTE and \
                {k: current.get(k) for k in ("url", "endpointurl")} == {"url": url, "endpointurl": endpoint_url}:
            return False
        with repo.config.edit("repo") as conf:
            conf["remote"][REMOTE] = wanted
            conf["core"]["remote"] = REMOTE
    return True


def pull(root: str | Path) -> int:
    """Fetch every stage's outputs from the default remote into the cache and the work tree;
    returns the number of files fetched."""
    with _repo(root) as repo:
        done = repo.pull()
    return int(done.get("stats", {}).get("fetched", 0))


def push(root: str | Path) -> int:
    """Push cached outputs to the default remote; returns the number of files transferred
    (0 when no default remote is configured)."""
    with _repo(root) as repo:
        if not repo.config.get("core", {}).get("remote"):
            return 0
        return int(repo.push())


# Modules that cannot change a stage's outputs, so no stage lists them as a DVC dependency: the
# package markers (docstring only; a test keeps them so), MLflow logging (tracking), the
# command-line plumbing every stage's main() goes through (stage), and DVC's own helpers (this
# module). A change to them must never make DVC rerun the pipeline.
NOT_LINEAGE = ("components/__init__.py", "components/pipeline/__init__.py", "components/pipeline/tracking.py",
               "components/pipeline/stage.py", "components/pipeline/lineage.py")


def import_closure(module: str, root: str | Path) -> set[str]:
    """The files (relative to ``root``) of every ``components`` module that running ``module``
    (``components.pretrain``) can import: every import statement, module-level or inside a
    function, followed transitively, with the packages' ``__init__.py`` on the way."""
    import ast

    root = Path(root)

    def file_of(name: str) -> Path | None:
        base = root / Path(*name.split("."))
        return base / "__init__.py" if (base / "__init__.py").is_file() else \
            base.with_suffix(".py") if base.with_suffix(".py").is_file() else None

    def with_parents(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]

    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = file_of(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found = [base] + [f"{base}.{a.name}" for a in node.names]  # a name may be a submodule
            else:
                continue
            todo += [m for f in found if f.split(".")[0] == "components" for m in with_parents(f)]
    return {str(file_of(n).relative_to(root)) for n in seen}


def uncovered_imports(info: StageInfo, root: str | Path) -> list[str]:
    """Files that stage ``info``'s command can import but its dvc.yaml deps do not cover (nor
    NOT_LINEAGE): a change to one of them would leave the stage's outputs stale unnoticed."""
    module = info.cmd.split("python -m ", 1)[1].split()[0]
    covered = lambda f: any(f == d or f.startswith(d.rstrip("/") + "/") for d in info.deps)  # noqa: E731
    return sorted(f for f in import_closure(module, root) if f not in NOT_LINEAGE and not covered(f))
