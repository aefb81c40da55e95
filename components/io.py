"""Writing outputs so that a crash never leaves a half-written artifact that looks whole:
everything is written under a temporary name beside its destination, then renamed into place.

The temporary name carries the writer's process id (``.<name>.tmp-<pid>-<random>``): the next
write of the same destination removes what a writer that is no longer alive left behind (a
crash or a kill -9 between the write and the rename), and leaves a live writer's alone."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(target: str | Path):
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``,
    on error it is deleted and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove the temporary copies of ``target`` (``.<name>.tmp-*``, ``.<name>.old-*``) whose
    writer is gone; returns what was removed. A name without a pid (an older layout) is a leftover."""
    target, removed = Path(target), []
    if not target.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            pid = leftover.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def folder_hash(folder: str | Path) -> str:
    """sha256 over the files of ``folder``: their relative paths and contents, in path order
    (the weights themselves, wherever the folder lies)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()
