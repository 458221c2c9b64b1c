"""Atomic file and folder writes: write to a temp sibling, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ""):
    """Yield a temp path next to `path`; on success it is fsync'ed and renamed to `path`.

    On any error (or interruption) the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """Yield a temp folder next to `path`; on success it replaces `path` (an old folder is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_json_atomic(path: str | Path, data) -> Path:
    """`data` as indented JSON at `path`, written atomically (benchmarks rewrite results as they go).

    The parent folder is created; an interrupted write leaves the previous file as it was."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n")
    return path


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """np.savez atomically (np.savez would append .npz to a temp name, so write via a handle)."""
    with atomic_file(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)
