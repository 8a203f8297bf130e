"""Where keras-turbo writes: output folders and files that never destroy the user's own.

Rules (issue 15):
  - an output folder (`optimize --out`) is created when missing; an existing non-empty one is
    used only when it holds keras-turbo's marker file (an earlier run's folder) or with --force;
  - one run at a time per folder: an exclusive lock, and a second run is told who holds it;
  - `best/` is built beside and renamed into place, and an existing `best/` is replaced only when
    keras-turbo wrote it (its own marker inside);
  - an output file (`-o`, `--json`) never overwrites an input, and an existing file only with
    --force; each is checked (a file, in a writable folder) before any work starts, so a bad
    path fails in a second, not after an hour of measuring;
  - nothing is written through a link that was there before (issue 30): every file is written
    under a fresh name and renamed into place (the rename replaces a link, never its target), the
    lock is opened with O_NOFOLLOW, and a run folder holding a symbolic link where keras-turbo
    writes (its marker, lock, results, reports, best/, artifacts/, reference/, anywhere below
    them) is refused with the link named, --force or not;
  - a path the operating system cannot create is one line, like any other bad output path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from keras_turbo.errors import OutputError

#: in every folder keras-turbo made for a run (and in every best/ it wrote)
MARKER = ".keras-turbo"
LOCK = ".keras-turbo.lock"
#: what keras-turbo writes in a run folder: a link at any of these (or below the folders) is refused
WRITES = (MARKER, LOCK, "results.json", "report.md", "report.html", "best", "artifacts", "reference")


def _write_marker(folder: Path, kind: str) -> None:
    text = json.dumps({"written_by": "keras-turbo", "kind": kind}) + "\n"
    write_file_atomically(folder / MARKER, lambda tmp: tmp.write_text(text))


def _own_regular_file(path: Path) -> bool:
    """A regular file at `path` itself, not a link to one."""
    return path.is_file() and not path.is_symlink()


def is_ours(folder: Path) -> bool:
    """Whether keras-turbo made `folder`: its marker file is there, or (folders written before
    markers existed) a results.json or best/manifest.json in keras-turbo's own schema. A link
    in their place proves nothing: it may point at another run's files."""
    folder = Path(folder)
    if _own_regular_file(folder / MARKER):
        return True
    for name, keys in (("results.json", {"model_fingerprint", "variants"}), ("manifest.json", {"artifact", "backend", "steps"})):
        f = folder / name
        try:
            if _own_regular_file(f) and f.stat().st_size < (64 << 20) and keys <= set(json.loads(f.read_text())):
                return True
        except (OSError, ValueError, TypeError):
            pass
    return False


def planted_links(folder: Path) -> list[Path]:
    """Symbolic links where keras-turbo would write in a run folder: at WRITES, and anywhere below
    the folders among them (a link is not followed: its own name is reported)."""
    folder = Path(folder)
    found = [folder / n for n in WRITES if (folder / n).is_symlink()]
    for n in WRITES:
        top = folder / n
        if top.is_symlink() or not top.is_dir():
            continue
        for root, dirs, files in os.walk(top, followlinks=False):
            found += [Path(root) / x for x in dirs + files if (Path(root) / x).is_symlink()]
    return found


def _refuse_links(out: Path, arg: str) -> None:
    links = planted_links(out)
    if links:
        shown = ", ".join(f"{p.relative_to(out)} -> {os.readlink(p)}" for p in links[:3]) + (", ..." if len(links) > 3 else "")
        raise OutputError(f"{arg} {out}: holds symbolic links where keras-turbo writes ({shown}); it never writes "
                          "through a link: remove them or choose another folder")


def _mkdir(folder: Path, arg: str, shown: Path) -> None:
    """`folder` and its parents made, or one line saying why the system would not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{arg} {shown}: cannot create {folder} ({e.strerror or type(e).__name__})".lstrip()) from None


def _open_lock(path: Path, arg: str, shown: Path):
    """The lock file, opened without following a link (a link planted there is refused)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{arg} {shown}: its lock file {path.name} is a symbolic link; refused") from None
        raise OutputError(f"{arg} {shown}: cannot open its lock file ({e.strerror or type(e).__name__})") from None
    return os.fdopen(fd, "r+")


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_dir(folder: Path, arg: str, shown: Path) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OutputError(f"{arg} {shown}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{arg} {shown}: cannot write in {base} (permission denied)")


@contextlib.contextmanager
def claim_out_dir(path: str | os.PathLike, force: bool = False, arg: str = "--out") -> Iterator[Path]:
    """Make `path` this run's output folder and hold it for the run.

    Creates it when missing; accepts an existing folder that is empty, holds keras-turbo's
    marker, or is named with `force`; then takes an exclusive lock (fcntl.flock on a lock file
    inside) for as long as the `with` block runs.

    Raises:
        OutputError: a file of that name, a folder with files keras-turbo did not write (without
            force), an unwritable place, or another keras-turbo run holding the folder.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{arg} {out}: a file of that name exists; an output folder is needed")
    if out.is_dir():
        theirs = [p.name for p in out.iterdir() if p.name not in (MARKER, LOCK)]
        if theirs and not is_ours(out) and not force:
            shown = ", ".join(sorted(theirs)[:3]) + (", ..." if len(theirs) > 3 else "")
            raise OutputError(f"{arg} {out}: holds files keras-turbo did not write ({shown}); "
                              "choose a new folder, or pass --force to write beside them")
    _check_writable_dir(out, arg, out)
    if out.is_dir():
        _refuse_links(out, arg)
    created = not out.exists()
    _mkdir(out, arg, out)
    fh = _open_lock(out / LOCK, arg, out)
    failed = False
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            raise OutputError(f"{arg} {out}: in use by another keras-turbo run ({holder}); "
                              "wait for it to finish or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        if not is_ours(out):
            _write_marker(out, "run")
        yield out
    except BaseException:
        failed = True
        raise
    finally:
        # A run that failed before writing anything (bad data, say) leaves no folder behind when
        # it made the folder. Otherwise the lock file stays: removing it would race a waiter.
        if failed and created and {p.name for p in out.iterdir()} <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
            with contextlib.suppress(OSError):
                out.rmdir()
        fh.close()  # closing releases the lock


def check_replaceable_dir(dst: str | os.PathLike, force: bool = False) -> None:
    """Fail early (before any work) when `replace_dir_atomically(..., dst, force)` would refuse."""
    dst = Path(dst)
    if dst.is_symlink():
        raise OutputError(f"{dst}: a symbolic link where keras-turbo writes a folder; it never writes through a link "
                          "(remove it)")
    if dst.exists() and not dst.is_dir():
        raise OutputError(f"{dst}: a file of that name exists where keras-turbo writes a folder")
    if dst.is_dir() and not is_ours(dst) and not force:
        raise OutputError(f"{dst}: a folder keras-turbo did not write; not replacing it (move it away, or pass --force)")


def replace_dir_atomically(build: Callable[[Path], None] | str | os.PathLike, dst: str | os.PathLike,
                           force: bool = False) -> Path:
    """Write a folder beside `dst` and move it into place, so `dst` is never half-written.

    Args:
        build: a function that fills the scratch folder it is given, or a folder to copy.
        dst: the folder to create or replace (`out/best`).
        force: replace a `dst` that keras-turbo did not write.

    Raises:
        OutputError: `dst` exists and keras-turbo did not write it (without force), or is a file.
    """
    dst = Path(dst)
    check_replaceable_dir(dst, force)
    _mkdir(dst.parent, "", dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.new-", dir=dst.parent))
    old = None
    try:
        if callable(build):
            build(tmp)
        else:
            shutil.copytree(build, tmp, dirs_exist_ok=True)
        _write_marker(tmp, "artifact")
        if dst.exists():
            # POSIX has no portable "swap two folders": move the old one aside first. A crash
            # between the two renames leaves the old copy as .<name>.old-* beside, never lost.
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.rmdir(old)
            os.rename(dst, old)
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and dst.exists():
            shutil.rmtree(old, ignore_errors=True)
    return dst


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _input_files(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    """Every file an input names: an OpenVINO .xml brings its .bin, a folder its contents."""
    files: list[Path] = []
    for i in inputs:
        if i is None or str(i).startswith("builtin:"):
            continue
        p = Path(i)
        files.append(p)
        if p.suffix == ".xml":
            files.append(p.with_suffix(".bin"))
    return files


def check_output_file(path: str | os.PathLike | None, inputs: Iterable[str | os.PathLike | None] = (),
                      force: bool = False, arg: str = "-o") -> None:
    """Check an output file before any work starts.

    Refuses: a folder; a path that is (or, for an OpenVINO .xml, whose .bin is) one of the
    inputs, or lies inside an input folder (a SavedModel); an existing file without `force`;
    a place keras-turbo cannot write.

    Raises:
        OutputError: with the argument's name and the path.
    """
    if path is None:
        return
    p = Path(path)
    targets = [p, p.with_suffix(".bin")] if p.suffix == ".xml" else [p]
    ins = _input_files(inputs)
    for t in targets:
        if t.is_dir():
            raise OutputError(f"{arg} {p}: {t} is a folder; give a file name")
        for i in ins:
            inside = i.is_dir() and t.absolute().resolve().is_relative_to(i.absolute().resolve())
            if _same(t, i) or inside or t.absolute().resolve() == i.absolute().resolve():
                raise OutputError(f"{arg} {p}: would overwrite the input {i}; choose another path")
        if t.exists() and not force:
            raise OutputError(f"{arg} {p}: {t} exists; pass --force to overwrite it")
    _check_writable_dir(p.parent, arg, p)
    # The folder made and a file tried in it now: a place the system will not write (under /proc,
    # a read-only mount) fails before the work, not after it.
    _mkdir(p.parent, arg, p)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=".probe", dir=p.parent)
    except OSError as e:
        raise OutputError(f"{arg} {p}: cannot write in {p.parent} ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a unique name beside `path`, then rename it into place: a reader
    never sees half a file and an interrupted write leaves nothing behind. The temp name keeps
    the suffix (Keras and the converters choose the format by it)."""
    p = Path(path)
    _mkdir(p.parent, "", p)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=f".tmp{p.suffix}", dir=p.parent)
    except OSError as e:
        raise OutputError(f"{p}: cannot write in {p.parent} ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return p
