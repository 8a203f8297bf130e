"""Where exported artifacts and the built-in model are kept between runs.

`$KERAS_TURBO_CACHE` if set, else `~/.cache/keras-turbo`. Entries are keyed by content hash,
so a changed model never reuses a stale export.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def root(override: str | os.PathLike | None = None) -> Path:
    """The cache directory (created on demand)."""
    if override is not None:
        base = Path(override)
    elif os.environ.get("KERAS_TURBO_CACHE"):
        base = Path(os.environ["KERAS_TURBO_CACHE"])
    else:
        base = Path.home() / ".cache" / "keras-turbo"
    base.mkdir(parents=True, exist_ok=True)
    return base


# ---------------------------------------------------------------- concurrent and damaged entries
#
# Two runs may build the same entry at once (two benchmarks, or optimize beside convert), and a
# run may be killed half-way. So an entry is built in a scratch folder with a unique name and
# renamed into place under a per-key lock (the second run waits, then finds it built), and its
# files' sizes and hashes are recorded beside them: an entry that no longer matches (a truncated
# .tflite, a file removed by hand) is rebuilt instead of failing every later run.

INTEGRITY = ".keras-turbo-integrity.json"


@contextlib.contextmanager
def lock(entry: Path):
    """Hold an exclusive lock for the cache entry `entry` (blocking: the second run waits)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases it


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != INTEGRITY)


def record(folder: Path) -> None:
    """Write the size and SHA-256 of every file in `folder` beside them."""
    doc = {str(p.relative_to(folder)): [p.stat().st_size, _digest(p)] for p in _files(folder)}
    (folder / INTEGRITY).write_text(json.dumps(doc, indent=0))


_verified: set[tuple[str, float]] = set()  # entries this process already checked (path, mtime)


def intact(folder: Path) -> bool:
    """Whether `folder` is a complete entry: recorded, and every recorded file as recorded.
    (Files added later, such as ONNX Runtime's pre-processed copy beside a float model, are not
    the entry's and are not judged.) Sizes are checked every time, hashes once per process."""
    try:
        key = (str(folder), (folder / INTEGRITY).stat().st_mtime)
        doc = json.loads((folder / INTEGRITY).read_text())
    except (OSError, ValueError):
        return False
    for rel, (size, digest) in doc.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size or (key not in _verified and _digest(p) != digest):
            return False
    _verified.add(key)
    return True


def scratch(entry: Path) -> Path:
    """A new scratch folder to build `entry` in (the caller holds `lock(entry)`). Scratch folders
    of the same entry left by a killed run are removed first: under the lock, no live run can
    be using them."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{entry.name}.build-"
    for stale in entry.parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=entry.parent))


def publish(tmp: Path, entry: Path) -> None:
    """Record `tmp` and move it into place as `entry` (the caller holds `lock(entry)`)."""
    record(tmp)
    if entry.exists():  # a damaged entry: set it aside, then remove it
        old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=entry.parent))
        os.rename(entry, old / "x")
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, entry)
