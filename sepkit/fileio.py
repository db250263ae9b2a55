"""Atomic file output: readers never see a half-written file.

Temp files are named ``.sepkit-<pid>-<random>.tmp`` beside their target: short (the
target's own name may already use the 255-byte limit), recognisable as sepkit's, and
tied to the writing process so that a later run can tell a leftover of a killed run
(:func:`remove_stale_temp_files`) from a write in progress.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMP_PREFIX = ".sepkit-"
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)-[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}$")


def _current_umask() -> int:
    # The umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _replaced_from_temp(path: Path) -> Iterator[tuple[int, str]]:
    """A new temporary file beside ``path`` (named so that a killed run's leftover is
    recognised and removed), as ``(open descriptor, its path)``; the caller closes the
    descriptor. On success the file gets the mode a plain ``open`` would give
    (``0o666 & ~umask``) and replaces ``path`` in one rename; on any error (or
    interruption) it is removed and ``path`` keeps its previous content."""
    prefix = f"{TEMP_PREFIX}{os.getpid()}-"
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=path.parent)
    except FileNotFoundError:
        # the folder is created only when missing: a dataset writes thousands of files
        # into each folder, and a mkdir for each of them was a measurable part of writing
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        yield fd, tmp
        # mkstemp creates 0600 files; outputs (datasets, separated audio) are meant to
        # be as readable as anything else the user writes.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; see :func:`_replaced_from_temp`
    for what happens on success and on error."""
    with _replaced_from_temp(Path(path)) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)


@contextmanager
def atomic_binary_file(path: str | Path) -> Iterator[BinaryIO]:
    """:func:`atomic_output` for a writer that takes a file object: yields the temporary
    file already open for binary writing (the descriptor ``mkstemp`` created, so the
    file is created once and never opened again by name: a dataset writes thousands)."""
    with _replaced_from_temp(Path(path)) as (fd, _), os.fdopen(fd, "wb") as handle:
        yield handle


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete sepkit temp files in ``folder`` (not recursive) whose writing process is
    gone, e.g. after a SIGKILL. Only names matching sepkit's own temp pattern are
    touched. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = int(match.group(1))
        if _process_alive(pid):  # a write in progress (this process included)
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def update_digest_from_file(digest: Any, path: Path) -> None:
    """Feed ``path``'s bytes into ``digest`` in 1 MiB blocks (bounded memory for any size)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    update_digest_from_file(digest, path)
    return digest.hexdigest()


def sha256_model(path: Path) -> str:
    """Hex SHA-256 of a model: a checkpoint file's bytes, or, for a model folder such as a
    SpeechBrain card, every file's relative name and bytes in sorted order, so that any
    change to the model changes it."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        update_digest_from_file(digest, file)
    return digest.hexdigest()
