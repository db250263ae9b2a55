"""Shared machinery of the corpus recipes: plans, writing, resuming, downloads, checks.

A recipe module (wsj0mix, librimix, wham, whamr, folder) turns the user's corpora into
:class:`SplitPlan` objects: the mixture rows of one output folder, which outputs go to
which sub-folder, and the tables to save. :func:`execute` then writes the tables and,
with ``write=True``, renders every row into the official layout with the one renderer
of :mod:`sepkit.data.mixtures`.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from sepkit.data.mixtures import MixtureSpec, write_outputs, write_table

WAV_HEADER_BYTES = 44


class PrepareError(RuntimeError):
    """A recipe cannot run: missing corpus folder or file, bad metadata, unsafe output."""


@dataclass
class SplitPlan:
    """The mixtures of one output folder (e.g. ``2speakers/wav8k/min/tr``).

    Attributes:
        name: human-readable label used in progress bars and summaries.
        directory: where the output folders of this split go.
        specs: one row per mixture (rendered with ``root=None``: paths are absolute).
        folders: output name -> sub-folder of ``directory`` (``{"mix_clean": "mix", ...}``).
        tables: file name -> rows, mixture tables written next to ``directory``
            (one per task when a corpus defines several).
    """

    name: str
    directory: Path
    specs: list[MixtureSpec]
    folders: dict[str, str]
    tables: dict[Path, list[MixtureSpec]] = field(default_factory=dict)

    def expected_files(self, spec: MixtureSpec) -> list[Path]:
        return [self.directory / folder / f"{spec.mixture_id}.wav" for folder in self.folders.values()]


def bytes_per_sample(spec: MixtureSpec) -> int:
    return 2 if spec.quantize else 4


def estimate_bytes(plans: list[SplitPlan]) -> int:
    """Bytes the written layout will take (mono WAV: header plus samples)."""
    total = 0
    for plan in plans:
        for spec in plan.specs:
            total += len(plan.folders) * (WAV_HEADER_BYTES + spec.length * bytes_per_sample(spec))
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def ensure_outside(out: Path, inputs: dict[str, Path | None]) -> None:
    """Refuse an output folder inside (or containing) an input corpus."""
    out_resolved = out.resolve()
    for label, folder in inputs.items():
        if folder is None:
            continue
        corpus = folder.resolve()
        if out_resolved == corpus or corpus in out_resolved.parents or out_resolved in corpus.parents:
            raise PrepareError(
                f"--out {out} overlaps the input corpus {label} ({folder}); "
                "sepkit never writes inside the input corpora: choose another output folder"
            )


def require_dir(path: Path | None, what: str, option: str) -> Path:
    if path is None:
        raise PrepareError(f"{what} is needed: pass {option} DIR")
    if not path.is_dir():
        raise PrepareError(f"{what} folder not found: {path} (given with {option})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise PrepareError(f"{what} not found: {path}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PinnedFile:
    """A metadata file from a public source, pinned to a commit and a checksum.

    ``sha256`` is ``None`` when it could not be computed when this list was written
    (no network); such a file is only accepted with ``trust_unpinned=True``, and its
    checksum is then printed so it can be pinned.
    """

    url: str
    relative_path: str
    sha256: str | None


def fetch_url(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` (atomic). Separate so tests can replace it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as handle:
            shutil.copyfileobj(response, handle)
        os.replace(tmp, destination)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download_pinned(files: list[PinnedFile], destination: Path, trust_unpinned: bool = False) -> Path:
    """Fetch every pinned file below ``destination`` (skipping ones already there with
    the right checksum) and verify its sha256; returns ``destination``."""
    for item in files:
        target = destination / item.relative_path
        if item.sha256 is None and not trust_unpinned:
            raise PrepareError(
                f"{item.url}: no pinned checksum is known for this file; download it yourself and pass "
                "the metadata folder (--lists/--metadata DIR), or allow an unpinned download explicitly"
            )
        if target.is_file() and (item.sha256 is None or sha256_of(target) == item.sha256):
            continue
        try:
            fetch_url(item.url, target)
        except OSError as err:
            raise PrepareError(
                f"cannot download {item.url} ({err}); without network pass the metadata folder (--lists/--metadata DIR)"
            ) from err
        digest = sha256_of(target)
        if item.sha256 is None:
            print(f"note: {item.relative_path} sha256 {digest} (unpinned, accepted on request)", file=sys.stderr)
        elif digest != item.sha256:
            target.unlink()
            raise PrepareError(
                f"{item.url}: checksum mismatch (got sha256 {digest}, pinned {item.sha256}); file removed"
            )
    return destination


def file_is_complete(path: Path, spec: MixtureSpec) -> bool:
    """A finished output: readable header, right rate, length and sample format.
    Writes are atomic (temp + rename), so a file that passes this was fully written."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False
    subtype = "PCM_16" if spec.quantize else "FLOAT"
    return info.samplerate == spec.sample_rate and info.frames == spec.length and info.subtype == subtype


# --- numpy archives without pickle ----------------------------------------------------------------------

# What a pickled numpy array of strings or numbers needs, and nothing else: the array
# and dtype constructors (numpy 1.x and 2.x module names) and numpy scalars.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays of plain values; any other global (a payload) is refused."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays of strings and numbers")


def _plain(value: object) -> bool:
    """Whether ``value``, an element of an unpickled object array, is data and not an object."""
    if isinstance(value, np.ndarray):
        return not value.dtype.hasobject
    return isinstance(value, (str, bytes, int, float, np.generic)) and not isinstance(value, np.object_)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, without running any code it may carry.

    Numeric and string members are read with ``allow_pickle=False``; object arrays
    (the official WHAM! ``utterance_id`` is one) are unpickled by a reader that admits
    only numpy's array and dtype constructors, and must hold only strings and numbers.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as raw:
                    handle = io.BytesIO(raw.read())
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    _, _, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    _, _, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise ValueError(f"member {member} has .npy format version {version}, expected 1.0 or 2.0")
                if dtype.hasobject:
                    array = _ArrayOnlyUnpickler(handle).load()
                    if not isinstance(array, np.ndarray) or not all(_plain(v) for v in array.reshape(-1)):
                        raise ValueError(f"member {member} is not an array of strings and numbers")
                else:
                    handle.seek(0)
                    array = np.lib.format.read_array(handle, allow_pickle=False)
                arrays[member[: -len(".npy")]] = array
    except (zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError, OSError) as err:
        raise PrepareError(f"{path}: cannot read this .npz file safely ({err})") from None
    return arrays


# --- worker processes -----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: the worker ends when the ``sepkit prepare`` process that
    started it dies (even by SIGKILL), instead of blocking forever on its task queue.
    Linux delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere, or
    if the parent died before that was set, a thread polls the parent pid."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A process pool whose workers exit when this process dies."""
    return ProcessPoolExecutor(max_workers=jobs, initializer=_exit_with_parent, initargs=(os.getpid(),))


def _write_one(job: tuple[MixtureSpec, Path, dict[str, str]]) -> int:
    spec, directory, folders = job
    write_outputs(spec, directory, folders)
    return 1


def execute(plans: list[SplitPlan], write: bool, jobs: int = 1, dry_run: bool = False, progress: bool = True) -> dict:
    """Write the tables of ``plans`` and, with ``write``, every output file.

    Finished files (see :func:`file_is_complete`) are skipped, so an interrupted run
    resumes where it stopped. Before writing, the free disk space is checked against
    the estimate for the files still missing.

    Returns:
        a summary dict (counts, estimated bytes, files written / skipped).
    """
    summary = {
        "mixtures": sum(len(p.specs) for p in plans),
        "estimated_bytes": estimate_bytes(plans) if write else 0,
        "tables": [str(t) for p in plans for t in p.tables],
        "written": 0,
        "skipped": 0,
    }
    for plan in plans:
        ids = [spec.mixture_id for spec in plan.specs]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise PrepareError(
                f"{plan.name}: mixture id {duplicate!r} occurs more than once; output files would collide"
            )
    if dry_run:
        return summary
    for plan in plans:
        for table_path, rows in plan.tables.items():
            # in file-name order: row i of the table is file i of the written folder
            # (the written-folder dataset lists files sorted), so both give the same batches
            write_table(table_path, sorted(rows, key=lambda spec: f"{spec.mixture_id}.wav"))
    if not write:
        return summary
    todo: list[tuple[MixtureSpec, Path, dict[str, str]]] = []
    missing_bytes = 0
    for plan in plans:
        # a killed worker (SIGKILL, power loss) can leave its temp file behind
        for folder in plan.folders.values():
            for stale in (plan.directory / folder).glob(".*.tmp"):
                stale.unlink()
        for spec in plan.specs:
            missing = {
                name: folder
                for name, folder in plan.folders.items()
                if not file_is_complete(plan.directory / folder / f"{spec.mixture_id}.wav", spec)
            }
            if missing:
                todo.append((spec, plan.directory, missing))
                missing_bytes += len(missing) * (WAV_HEADER_BYTES + spec.length * bytes_per_sample(spec))
            summary["skipped"] += len(plan.folders) - len(missing)
    if todo:
        anchor = plans[0].directory
        anchor.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(anchor).free
        if missing_bytes > free:
            raise PrepareError(
                f"not enough disk space in {anchor}: {human_bytes(missing_bytes)} to write, {human_bytes(free)} free"
            )
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="writing mixtures", unit="mix", disable=not progress or not todo)
    if jobs <= 1:
        for job in todo:
            _write_one(job)
            bar.update(1)
    else:
        with worker_pool(jobs) as pool:
            for done in pool.map(_write_one, todo, chunksize=max(1, len(todo) // (jobs * 8))):
                bar.update(done)
    bar.close()
    summary["written"] = sum(len(job[2]) for job in todo)
    return summary
