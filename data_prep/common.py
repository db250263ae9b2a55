"""Shared machinery of the corpus recipes: plans, writing, resuming, downloads, checks.

A recipe module (wsj0mix, librimix, wham, whamr, folder) turns the user's corpora into
:class:`SplitPlan` objects: the mixture rows of one output folder, which outputs go to
which sub-folder, and the tables to save. :func:`execute` then writes the tables and,
with ``write=True``, renders every row into the official layout with the one renderer
of :mod:`sepkit.data.mixtures`.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import hashlib
import io
import json
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.progress import Progress
from sepkit.data.mixtures import (
    MixtureSpec,
    RowValueError,
    SignalCache,
    check_row_values,
    file_samples,
    render_outputs,
    write_rendered,
    write_table,
)
from sepkit.data.paths import MANIFEST, UnsafePathError, check_name, check_spec_paths, is_inside, output_file
from sepkit.fileio import sha256_file, write_text_atomic

WAV_HEADER_BYTES = 44


class PrepareError(RuntimeError):
    """A recipe cannot run: missing corpus folder or file, bad metadata, unsafe output."""


# completes one row from what its recipe kept for it and the group's signal cache: a
# module-level function, so that worker processes can run it
RowCompleter = Callable[[MixtureSpec, object, SignalCache], MixtureSpec]


@dataclass
class RowCompletion:
    """Values of a split's rows that are derived from the audio itself, such as WHAMR!'s
    energy-matching gains: they need the same reads, convolutions and resampling as
    writing the row, so :func:`execute` computes them in the same pass, with the same
    :class:`SignalCache`, instead of rendering every source twice.

    Attributes:
        complete: returns the finished row from its plan row (holding placeholders),
            ``inputs[mixture_id]`` and the cache of its group.
        inputs: mixture id -> what ``complete`` needs for that row.
        label: progress label when the rows are completed without writing audio.
    """

    complete: RowCompleter
    inputs: dict[str, object]
    label: str


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
        out: the ``--out`` folder; every output path must resolve inside it
            (default: ``directory``).
        roots: the folders source paths may point into (the input corpora and the
            caches this run writes under ``out``); anything else is refused.
        completion: values :func:`execute` derives from the audio before the rows are
            final (see :class:`RowCompletion`); until then ``specs`` and ``tables`` hold
            placeholders for them, and :func:`plan_digest` (which identifies the split's
            inputs and options) is the same before and after.
    """

    name: str
    directory: Path
    specs: list[MixtureSpec]
    folders: dict[str, str]
    tables: dict[Path, list[MixtureSpec]] = field(default_factory=dict)
    out: Path | None = None
    roots: tuple[Path, ...] = ()
    completion: RowCompletion | None = None

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
        if target.is_file() and (item.sha256 is None or sha256_file(target) == item.sha256):
            continue
        try:
            fetch_url(item.url, target)
        except OSError as err:
            raise PrepareError(
                f"cannot download {item.url} ({err}); without network pass the metadata folder (--lists/--metadata DIR)"
            ) from err
        digest = sha256_file(target)
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


# --- metadata that decides which files are read and written -------------------------------------------


def validate_plans(plans: list[SplitPlan]) -> None:
    """Refuse a plan with a row no recipe should produce: an id that is not a plain file
    name, a source outside the plan's roots, an output resolving outside ``--out``, a
    length, position or gain out of range. Runs before anything is written.

    Resolving every path is most of the cost, so each output folder is resolved once
    (a checked id is a plain name, so ``folder/<id>.wav`` resolves inside the folder
    unless that file is a symlink, which gets the full check) and each set of source
    paths once per set of roots (the rows of one utterance at every rate and mode share it)."""
    base = Path.cwd()
    checked_sources: set[tuple] = set()
    for plan in plans:
        out = plan.out if plan.out is not None else plan.directory
        folder_inside = {folder: is_inside(plan.directory / folder, out) for folder in set(plan.folders.values())}
        for spec in plan.specs:
            try:
                check_row_values(spec)
                check_name(spec.mixture_id)
                signals = [*spec.sources, *([spec.noise] if spec.noise is not None else [])]
                sources_key = (tuple((s.path, s.rir, s.anechoic_rir) for s in signals), plan.roots)
                if sources_key not in checked_sources:
                    check_spec_paths(spec, base, plan.roots)
                    checked_sources.add(sources_key)
                for folder, inside in folder_inside.items():
                    if not inside or (plan.directory / folder / f"{spec.mixture_id}.wav").is_symlink():
                        output_file(out, plan.directory / folder, spec.mixture_id)
            except (UnsafePathError, RowValueError) as err:
                raise PrepareError(f"{plan.name}: mixture {spec.mixture_id!r}: {err}") from None
        for table in plan.tables:
            if not is_inside(table, out):
                raise PrepareError(f"{plan.name}: table {table} resolves outside the output folder {out}")


def _stray_outputs(plan: SplitPlan, folders: set[str]) -> list[Path]:
    """Audio files sepkit would write in ``folders`` of ``plan.directory`` whose id is not in the plan."""
    expected = {f"{spec.mixture_id}.wav" for spec in plan.specs}
    return [
        path
        for folder in sorted(folders)
        for path in sorted((plan.directory / folder).glob("*.wav"))
        if path.name not in expected
    ]


def _row_fields(spec: MixtureSpec) -> dict:
    """``dataclasses.asdict(spec)`` for hashing, without its deep copy of every value
    (most of the digest's time on a large corpus): the same JSON text."""
    return {
        **vars(spec),
        "sources": [vars(source) for source in spec.sources],
        "noise": vars(spec.noise) if spec.noise is not None else None,
    }


def plan_digest(plan: SplitPlan) -> str:
    """sha256 of everything that decides a split's files: its folders and every row."""
    rows = sorted((_row_fields(spec) for spec in plan.specs), key=lambda row: row["mixture_id"])
    text = json.dumps({"folders": plan.folders, "rows": rows}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(out: Path) -> dict:
    """``out/prepare_manifest.json`` (``{"splits": {}}`` when there is none yet)."""
    path = out / MANIFEST
    if not path.is_file():
        return {"splits": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise PrepareError(f"{path}: not a readable prepare manifest ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise PrepareError(f"{path}: not a prepare manifest (no 'splits' table)")
    return manifest


def write_manifest(out: Path, manifest: dict) -> None:
    """Replace ``out/prepare_manifest.json`` atomically."""
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1))


def _differences(before: dict, now: dict) -> str:
    """The options that changed between two runs, for the refusal message."""
    keys = sorted(set(before) | set(now))
    changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]
    return "; ".join(changed) if changed else "same options, but the input corpora or metadata differ"


def claim_output(out: Path, plans: list[SplitPlan], parameters: dict, force: bool, dry_run: bool) -> None:
    """Refuse to reuse a split folder of ``out`` prepared with other parameters unless
    ``force``, then record this run in the manifest before anything else is written.

    A split whose rows or folders differ from what the manifest recorded (other options,
    or other inputs) would mix old and new files. With ``force`` its old audio files
    (``*.wav`` in the folders sepkit writes there, old and new) are removed. Recording
    the run first means a run killed midway is resumed, and a different one refused,
    like a finished one.
    """
    validate_plans(plans)  # a hostile row is refused before --force removes anything
    manifest = read_manifest(out)
    changed = []
    for plan in plans:
        entry = manifest["splits"].get(str(plan.directory.relative_to(out)))
        if entry is None or entry.get("rows_sha256") == plan_digest(plan):
            continue
        if not force:
            raise PrepareError(
                f"{plan.directory} was prepared with other parameters "
                f"({_differences(entry.get('parameters', {}), parameters)}); pass --force to rebuild it "
                "(its audio files are removed), or choose another --out"
            )
        changed.append((plan, entry))
    if dry_run:
        return
    for plan, entry in changed:
        for folder in sorted(set(plan.folders.values()) | set(entry.get("folders", {}).values())):
            for path in sorted((plan.directory / folder).glob("*.wav")):
                path.unlink()
    update_manifest(out, plans, False, parameters)


def update_manifest(out: Path, plans: list[SplitPlan], written: bool, parameters: dict) -> None:
    """Record what ``plans`` built in ``out/prepare_manifest.json``: per split its folders,
    tables, mixture count, whether the audio is written (kept from an earlier run only if
    its rows were the same), the options and a digest of the rows (see
    :func:`claim_output`); and the folders its tables may read from."""
    manifest = read_manifest(out)
    roots = set(manifest.get("roots", []))
    for plan in plans:
        rel = str(plan.directory.relative_to(out))
        previous = manifest["splits"].get(rel, {})
        digest = plan_digest(plan)
        manifest["splits"][rel] = {
            "name": plan.name,
            "folders": plan.folders,
            "tables": [str(t.relative_to(out)) for t in plan.tables],
            "mixtures": len(plan.specs),
            "written": written or (previous.get("written", False) and previous.get("rows_sha256") == digest),
            "parameters": parameters,
            "rows_sha256": digest,
        }
        roots.update(str(Path(r).absolute()) for r in plan.roots)
    manifest["roots"] = sorted(roots)
    write_manifest(out, manifest)


def run_parameters(args: dict) -> dict:
    """The options of a ``sepkit prepare`` run that can change what it writes (JSON-ready)."""
    ignored = {"out", "write", "metadata_only", "jobs", "dry_run", "no_progress", "force", "trust_unpinned_download"}
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in sorted(args.items())
        if key not in ignored
    }


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


@dataclass
class WriteJob:
    """One row to finish: its split folder, the outputs still missing (maybe none) and,
    for a split with a :class:`RowCompletion`, its completer and that row's input."""

    spec: MixtureSpec
    directory: Path
    missing: dict[str, str]
    complete: RowCompleter | None = None
    completion_input: object = None


# what a recipe computes from a row while it is written (its outputs as written, and
# render_outputs' details such as the peak before normalisation), for its side files
RowHook = Callable[[MixtureSpec, dict[str, np.ndarray], dict[str, float]], object]


@dataclass
class GroupResult:
    """What :func:`_write_group` hands back: the number of rows, ``(split folder,
    mixture id, row_hook's value)`` per rendered row, and ``(split folder, finished
    row)`` per completed row."""

    rows: int
    values: list[tuple[str, str, object]]
    completed: list[tuple[str, MixtureSpec]]


# one row's outputs as its files store them (see file_samples): the row, its split
# folder, output name -> sub-folder, output name -> samples
Rendered = tuple[MixtureSpec, Path, dict[str, str], dict[str, np.ndarray]]


def _write_rendered(rendered: Rendered) -> None:
    write_rendered(*rendered)


def _finish_group(group: list[WriteJob], row_hook: RowHook | None, write: Callable[[Rendered], object]) -> GroupResult:
    """Complete and render the rows of one group (the same mixture at every rate and mode)
    with one :class:`SignalCache`, so each source is read, convolved and resampled once
    for all of them and for their derived values, handing each row's outputs to
    ``write``. ``row_hook`` is computed from the signals as written (no second render)."""
    cache = SignalCache()
    result = GroupResult(len(group), [], [])
    for job in group:
        spec = job.spec
        if job.complete is not None:
            spec = job.complete(spec, job.completion_input, cache)
            result.completed.append((str(job.directory), spec))
        if not job.missing:
            continue
        details: dict[str, float] = {}
        out = render_outputs(spec, None, list(job.missing), cache, details)
        if row_hook is not None:
            result.values.append((str(job.directory), spec.mixture_id, row_hook(spec, out, details)))
        # converted one by one, each float64 output released as soon as it is converted
        write((spec, job.directory, job.missing, {name: file_samples(spec, out.pop(name)) for name in list(out)}))
    return result


def _write_group(group: list[WriteJob], row_hook: RowHook | None = None) -> GroupResult:
    """:func:`_finish_group`, writing each row at once (what a worker process does)."""
    return _finish_group(group, row_hook, _write_rendered)


class _BackgroundWriter:
    """Writes rendered rows in a second thread, in order, at most ``depth`` rows behind the
    rendering: creating and filling a file costs about as much as rendering it and waits
    on the kernel rather than on Python, so on two cores the two overlap, while at most
    ``depth`` rows' outputs wait in memory. A failed write is raised by the next call."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-writer")
        self._pending: collections.deque[Future] = collections.deque()
        self.last: Future | None = None  # the write of the last row handed over
        self._failure: BaseException | None = None  # the first failed write's error

    def __call__(self, rendered: Rendered) -> None:
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self.last = self._thread.submit(_write_rendered, rendered)
        self.last.add_done_callback(self._note_failure)
        self._pending.append(self.last)

    def _note_failure(self, future: Future) -> None:
        if self._failure is None and not future.cancelled() and future.exception() is not None:
            self._failure = future.exception()

    def check(self) -> None:
        """Raise the error of any write that has failed so far."""
        if self._failure is not None:
            raise self._failure

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        # waits for a write in progress, so that no temp file is left half written
        self._thread.shutdown(wait=True, cancel_futures=True)


def _render_while_writing(groups: list[list[WriteJob]], row_hook: RowHook | None) -> Iterator[GroupResult]:
    """The groups' results in one process, each once its files are written: rows are
    rendered in this thread while :class:`_BackgroundWriter` writes the previous ones."""
    writer = _BackgroundWriter()
    waiting: collections.deque[tuple[GroupResult, Future | None]] = collections.deque()
    try:
        for group in groups:
            before = writer.last
            result = _finish_group(group, row_hook, writer)
            waiting.append((result, writer.last if writer.last is not before else None))
            # writes finish in order: once a group's last write is done, all of its are,
            # and the earlier ones' failures were noted before the last one started
            while waiting and (waiting[0][1] is None or waiting[0][1].done()):
                if waiting[0][1] is not None:
                    waiting[0][1].result()
                writer.check()
                yield waiting.popleft()[0]
        writer.drain()
        while waiting:
            yield waiting.popleft()[0]
    finally:
        writer.close()


def _group_by_mixture(todo: list[WriteJob]) -> list[list[WriteJob]]:
    """``todo`` grouped by mixture id, in order of first appearance. Only which rows share a
    cache depends on the grouping: the cache's keys hold every input of a signal, so rows of
    different sources that happen to share an id still render exactly as alone."""
    groups: dict[str, list[WriteJob]] = {}
    for job in todo:
        groups.setdefault(job.spec.mixture_id, []).append(job)
    return list(groups.values())


def _write_tables(plans: list[SplitPlan], completed: dict[tuple[str, str], MixtureSpec]) -> None:
    """Write every table of ``plans``; a row of a split with a :class:`RowCompletion` takes
    the sources of its completed row (``completed[(split folder, mixture id)]``)."""
    for plan in plans:
        for table_path, rows in plan.tables.items():
            if plan.completion is not None:
                rows = [replace(row, sources=completed[(str(plan.directory), row.mixture_id)].sources) for row in rows]
            # in file-name order: row i of the table is file i of the written folder
            # (the written-folder dataset lists files sorted), so both give the same batches
            write_table(table_path, sorted(rows, key=lambda spec: f"{spec.mixture_id}.wav"))


def execute(
    plans: list[SplitPlan],
    write: bool,
    jobs: int = 1,
    dry_run: bool = False,
    progress: bool = True,
    force: bool = False,
    row_hook: RowHook | None = None,
    checked: bool = False,
) -> dict:
    """Write the tables of ``plans`` and, with ``write``, every output file.

    Every row is checked first (:func:`validate_plans`; ``checked`` says the caller has
    just done so, as :func:`claim_output` does). Finished files (see
    :func:`file_is_complete`) are skipped, so an interrupted run resumes where it
    stopped. Audio files in a split's folders that are not in its table (left by a run
    with other parameters) are refused, or removed with ``force``. Before writing, the
    free disk space is checked against the estimate for the files still missing.

    A split with a :class:`RowCompletion` has its rows completed in the pass that writes
    them (with or without audio to write, also for rows whose files are complete), and
    its tables are written once every row is final; the other tables are written first.

    ``row_hook(spec, outputs, details)`` (a module-level function, so workers can run it)
    is called on every row rendered in this run with the outputs as rendered for
    writing and :func:`render_outputs`' details; its values let a recipe write side files
    without rendering the rows again.

    Returns:
        a summary dict (counts, estimated bytes, files written / skipped, and
        ``row_values``: ``(str(split folder), mixture id) -> row_hook's value`` for the
        rows rendered in this run; rows found complete are not in it).
    """
    summary = {
        "mixtures": sum(len(p.specs) for p in plans),
        "estimated_bytes": estimate_bytes(plans) if write else 0,
        "tables": [str(t) for p in plans for t in p.tables],
        "written": 0,
        "skipped": 0,
        "row_values": {},
    }
    for plan in plans:
        ids = [spec.mixture_id for spec in plan.specs]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise PrepareError(
                f"{plan.name}: mixture id {duplicate!r} occurs more than once; output files would collide"
            )
    if not checked:
        validate_plans(plans)
    for plan in plans:
        strays = _stray_outputs(plan, set(plan.folders.values()))
        if strays and not force:
            raise PrepareError(
                f"{plan.directory}: {len(strays)} audio file(s) not in this split's table, e.g. {strays[0]}: "
                "left by a run with other parameters; pass --force to remove them, or choose another --out"
            )
        if strays and not dry_run:
            for path in strays:
                path.unlink()
    if dry_run:
        return summary
    completing = [plan for plan in plans if plan.completion is not None]
    _write_tables([plan for plan in plans if plan.completion is None], {})
    if not write and not completing:
        return summary
    todo: list[WriteJob] = []
    missing_bytes = 0
    for plan in plans:
        completion = plan.completion
        if write:
            # a killed worker (SIGKILL, power loss) can leave its temp file behind
            for folder in plan.folders.values():
                for stale in (plan.directory / folder).glob(".*.tmp"):
                    stale.unlink()
        for spec in plan.specs:
            missing = {
                name: folder
                for name, folder in plan.folders.items()
                if write and not file_is_complete(plan.directory / folder / f"{spec.mixture_id}.wav", spec)
            }
            if missing or completion is not None:
                job = WriteJob(spec, plan.directory, missing)
                if completion is not None:
                    job.complete, job.completion_input = completion.complete, completion.inputs[spec.mixture_id]
                todo.append(job)
                missing_bytes += len(missing) * (WAV_HEADER_BYTES + spec.length * bytes_per_sample(spec))
            if write:
                summary["skipped"] += len(plan.folders) - len(missing)
    if missing_bytes:
        anchor = plans[0].directory
        anchor.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(anchor).free
        if missing_bytes > free:
            raise PrepareError(
                f"not enough disk space in {anchor}: {human_bytes(missing_bytes)} to write, {human_bytes(free)} free"
            )
    # a tqdm bar on a terminal, plain periodic lines in a log file (no carriage returns)
    label = "writing mixtures" if write else completing[0].completion.label
    bar = Progress(len(todo), label, progress, unit="mix")
    groups = _group_by_mixture(todo)
    row_values: dict[tuple[str, str], object] = {}
    completed: dict[tuple[str, str], MixtureSpec] = {}
    with contextlib.ExitStack() as stack:
        if jobs <= 1:
            results: Iterable[GroupResult] = _render_while_writing(groups, row_hook)
        else:
            pool = stack.enter_context(worker_pool(jobs))
            write_group = functools.partial(_write_group, row_hook=row_hook)
            results = pool.map(write_group, groups, chunksize=max(1, len(groups) // (jobs * 8)))
        for result in results:
            row_values.update(((directory, name), value) for directory, name, value in result.values)
            completed.update(((directory, spec.mixture_id), spec) for directory, spec in result.completed)
            bar.update(result.rows)
    bar.close()
    _write_tables(completing, completed)
    summary["written"] = sum(len(job.missing) for job in todo)
    summary["row_values"].update(row_values)
    return summary
