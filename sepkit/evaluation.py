"""``sepkit evaluate``, ``sepkit score`` and ``sepkit compare``: separation quality per
utterance (``per_utterance.csv``) and summarised with bootstrap confidence intervals
(``summary.json``), computed by :mod:`sepkit.metrics`. Everything after this paragraph is
also the epilog of ``sepkit evaluate --help``.

Rules:

- **One bad utterance never stops the run.** An utterance that cannot be scored
  (missing, unreadable or corrupt audio, a missing estimate file, NaN/Inf samples,
  signals of different lengths, a sample rate or source count the model does not
  handle, a non-finite model output or score) is reported on stderr with its id and
  file, kept in ``per_utterance.csv`` as a ``failed`` row with the reason, listed under
  ``"failed"`` in ``summary.json``, and makes the exit code 1; every other utterance is
  still scored and written. (A written folder whose ``s1 .. sN`` lack files for some
  mixtures is refused as a whole before any work, by the folder reader.)
- **Silent references.** A reference source ``s_i`` whose energy (after removing its
  mean, as SI-SDR does) is at or below ``--silent-reference-db`` (default
  -40 dB) relative to the mixture's, i.e. ``10 log10(||s_i||^2 / ||x||^2) <= -40``, makes
  every metric undefined for that utterance: matching an estimate to a (nearly) silent
  target measures the floating-point floor or the other sources' leakage, not
  separation, and one such utterance can move a mean by tens of dB. The utterance keeps
  an ``excluded`` row with empty metric cells and the silent sources in the
  ``silent_references`` column, is left out of every statistic, and is listed under
  ``"excluded"`` in ``summary.json``.
- **Undefined metrics.** A metric that is undefined for one utterance (for example PESQ
  of a signal shorter than 0.25 s) has an empty cell, its reason in the ``flags``
  column, and is left out of that metric's statistics (each statistic states its
  ``n``); ``summary.json`` lists these under ``"undefined"``.
- **Matching.** Every metric is computed on the estimates matched to the references by
  PIT on SI-SDR; ``permutation`` lists, for reference s1, s2, ..., the number of the
  estimate matched to it (``2 1``: estimate 2 is s1). ``input_<metric>`` scores the
  unprocessed mixture as every estimate; ``<metric>_improvement`` is the difference.
- **Strict JSON.** ``summary.json`` never holds NaN or Inf; a statistic is ``null`` when
  no utterance has a value for it.

Outputs (``--out-dir``, by default ``<run>/evaluation/<data name>-<hash>/``, where
``<run>`` is the folder holding the checkpoint's ``checkpoints/`` folder and the hash is
of the data's resolved path, so two test sets never share a folder; for a model folder
or an ``hf://`` id, ``./evaluation/<model name>/<data name>-<hash>/``):
``per_utterance.csv``; ``summary.json`` (per metric: mean, median, std and bootstrap 95%
CI of the separated, input and improvement values; counts; failed and excluded
utterances; checkpoint and its sha256, data, versions, date); with ``--save-examples N``
the N best, median and worst utterances by SI-SDR improvement as wav files under
``examples/`` with their scores; unless ``--no-plots``, PNG plots under ``plots/``
(needs matplotlib: ``pip install 'sepkit[eval]'``).

Exit codes: 0 every utterance scored or excluded, 1 one or more utterances failed (the
others are written), 2 bad arguments or unusable input (nothing written).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import multiprocessing
import platform
import re
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import soundfile as sf
import torch

import sepkit
from sepkit.audio import list_audio_files, read_audio, write_audio_atomic
from sepkit.data.datasets import MixtureTableDataset, SegmentedDataset, WrittenMixtureDataset
from sepkit.fileio import atomic_output, sha256_model, write_text_atomic
from sepkit.inference import separate
from sepkit.metrics import CHEAP_METRICS, METRIC_NAMES, check_metrics, paired_bootstrap, summarize_metric
from sepkit.metrics import score_utterance as measure_utterance

SILENT_REFERENCE_DB = -40.0
SCORED, EXCLUDED, FAILED = "scored", "excluded", "failed"
# Packages whose version can change a score; recorded in summary.json when installed.
SCORING_PACKAGES = ("numpy", "torch", "torchmetrics", "fast_bss_eval", "pesq", "pystoi")


class UtteranceError(Exception):
    """One utterance cannot be scored; ``file`` is the file at fault when one is
    known (else the caller names the utterance's mixture file or table)."""

    def __init__(self, reason: str, file: Path | None = None) -> None:
        super().__init__(reason)
        self.file = file


@dataclass
class Utterance:
    """Where one utterance of a dataset comes from.

    ``origin`` is its mixture file (written folder) or the mixture table; ``audio_files``
    every audio file it is read from; ``sample_rate`` the rate the table renders it at
    (``None`` for a written folder, whose reader checks each file's rate itself).
    """

    id: str
    origin: Path
    audio_files: list[Path]
    sample_rate: int | None


def describe_utterance(dataset: SegmentedDataset, index: int) -> Utterance:
    """The files behind item ``index`` of a written folder or a mixture table."""
    if isinstance(dataset, WrittenMixtureDataset):
        name = dataset.names[index]
        mixture = dataset.mixture_dir / name
        references = [dataset.root / f"s{i}" / name for i in range(1, dataset.n_src + 1)]
        return Utterance(dataset.item_id(index), mixture, [mixture, *references], None)
    if isinstance(dataset, MixtureTableDataset):
        row = dataset.rows[index]
        signals = [*row.sources, *([row.noise] if row.noise is not None else [])]
        # Joining with an absolute path keeps the absolute path, as the renderer does.
        files = [dataset.root / signal.path for signal in signals]
        return Utterance(row.mixture_id, dataset.table, files, row.sample_rate)
    raise TypeError(f"cannot evaluate a {type(dataset).__name__}")


def _file_named_in(message: str, utterance: Utterance) -> Path:
    """The utterance's file that an error message names, else its origin."""
    return next((path for path in utterance.audio_files if str(path) in message), utterance.origin)


def _length_mismatch(dataset: SegmentedDataset, utterance: Utterance) -> UtteranceError | None:
    """For a written folder whose files differ in length (numpy's stacking error names
    none of them): an error naming the first file whose length differs from the mixture's."""
    if not isinstance(dataset, WrittenMixtureDataset):
        return None
    frames = {path: sf.info(str(path)).frames for path in utterance.audio_files}
    expected = frames[utterance.origin]
    odd = next((path for path, count in frames.items() if count != expected), None)
    if odd is None:
        return None
    return UtteranceError(
        f"length mismatch: {odd} has {frames[odd]} samples, the mixture {utterance.origin} has {expected}", odd
    )


def load_utterance(
    dataset: SegmentedDataset, index: int, utterance: Utterance, sample_rate: int, n_src: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one utterance and check it can be scored by a model at ``sample_rate`` with
    ``n_src`` outputs.

    Returns:
        ``(mixture [time], references [n_src, time])``, float32, finite.

    Raises:
        UtteranceError: naming the file at fault and the problem.
    """
    if utterance.sample_rate is not None and utterance.sample_rate != sample_rate:
        raise UtteranceError(f"rendered at {utterance.sample_rate} Hz, the model runs at {sample_rate} Hz")
    try:
        mixture, references = dataset[index]
    except ValueError as err:  # AudioError included: unreadable, empty, wrong rate, ...
        named = _file_named_in(str(err), utterance)
        mismatch = _length_mismatch(dataset, utterance) if named == utterance.origin else None
        raise (mismatch or UtteranceError(str(err), named)) from err
    if mixture.shape[-1] != references.shape[-1]:
        raise _length_mismatch(dataset, utterance) or UtteranceError(
            f"length mismatch: mixture {mixture.shape[-1]} samples, references {references.shape[-1]}"
        )
    if references.shape[0] != n_src:
        raise UtteranceError(f"{references.shape[0]} references, the model separates {n_src}")
    if not (torch.isfinite(mixture).all() and torch.isfinite(references).all()):
        # Only this utterance's files are read again, to name the one at fault.
        culprits = [path for path in utterance.audio_files if not np.isfinite(read_audio(path)[0]).all()]
        if culprits:
            raise UtteranceError(f"{culprits[0]}: non-finite samples (NaN or Inf)", culprits[0])
        raise UtteranceError("non-finite samples (NaN or Inf) after mixing")
    return mixture, references


# --- scoring one utterance (in the parent or in a worker process) --------------------


def parse_metrics(text: str) -> tuple[str, ...]:
    """argparse type of ``--metrics``: comma-separated names of :data:`METRIC_NAMES`, or ``all``."""
    if text.strip() == "all":
        return METRIC_NAMES
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric {', '.join(unknown) or repr(text)}; choose from {', '.join(METRIC_NAMES)} or all"
        )
    return names


def silent_references(references: np.ndarray, mixture: np.ndarray, silent_reference_db: float) -> list[str]:
    """Names (``s1``, ...) of the references ``[n_src, time]`` whose mean-removed energy is
    at or below ``silent_reference_db`` relative to the mixture's ``[time]``."""
    references = references.astype(np.float64, copy=False)  # no copy of what is float64 already
    mixture = mixture.astype(np.float64, copy=False)
    centred_references = references - references.mean(-1, keepdims=True)
    centred_mixture = mixture - mixture.mean()
    floor = float(centred_mixture @ centred_mixture) * 10 ** (silent_reference_db / 10)
    energies = (centred_references**2).sum(-1)
    return [f"s{i + 1}" for i, energy in enumerate(energies) if energy <= floor]


@dataclass
class ScoringJob:
    """The signals of one utterance, as handed to a worker process.

    ``estimates`` and ``references`` are ``[n_src, time]``, ``mixture`` ``[time]`` or
    ``None`` when the mixture is unknown (``sepkit score`` without ``--mixtures``: no
    input scores and no improvements then).
    """

    estimates: np.ndarray
    references: np.ndarray
    mixture: np.ndarray | None
    sample_rate: int
    metrics: tuple[str, ...]
    silent_reference_db: float


def score_job(job: ScoringJob) -> dict[str, Any]:
    """Score one utterance; module-level so that worker processes can run it.

    Returns:
        The row fields ``status`` (``scored`` or ``excluded``), ``reason``,
        ``permutation`` (0-based estimate index per reference), ``values``, ``inputs``,
        ``improvements`` (metric -> float or ``None``), ``flags`` (metric -> why it is
        undefined) and ``silent_references``.

    Raises:
        UtteranceError: an estimate or a score is not finite.
    """
    if not np.isfinite(job.estimates).all():
        raise UtteranceError("estimates are not finite (NaN or Inf)")
    # Without a mixture the silent-reference rule measures against the references' sum.
    baseline = job.mixture if job.mixture is not None else job.references.sum(0)
    silent = silent_references(job.references, baseline, job.silent_reference_db)
    if silent:
        undefined = dict.fromkeys(job.metrics)
        return {
            "status": EXCLUDED,
            "reason": f"silent reference {' '.join(silent)}",
            "permutation": None,
            "values": undefined,
            "inputs": undefined,
            "improvements": undefined,
            "flags": {},
            "silent_references": silent,
        }
    # Without a mixture, the metrics compute no input values (None) instead of scoring a stand-in.
    scores = measure_utterance(
        job.estimates, job.references, job.mixture, job.sample_rate, job.metrics, job.silent_reference_db
    )
    fields = {
        "values": {name: scores.values.get(name) for name in job.metrics},
        "inputs": {name: scores.inputs.get(name) for name in job.metrics},
        "improvements": {name: scores.improvements.get(name) for name in job.metrics},
    }
    for what, values in fields.items():
        for name, value in values.items():
            if value is not None and not math.isfinite(value):
                raise UtteranceError(f"{name} {what} is not finite ({value})")
    return {
        "status": SCORED,
        "reason": "",
        "permutation": [int(index) for index in scores.permutation],
        **fields,
        "flags": dict(scores.flags),
        "silent_references": [],
    }


# --- scoring many utterances: worker pool and progress -------------------------------


class ProgressReport:
    """Progress with an ETA: a rich bar on a terminal; on anything else (a log file, a
    pipe) one plain line per 10 % done, so that a log shows how far a run got."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.next_percent = 10
        self.bar = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
            return
        if 100 * self.done >= self.next_percent * self.total or self.done == self.total:
            elapsed = time.monotonic() - self.started
            remaining = elapsed / self.done * (self.total - self.done)
            print(
                f"{self.label}: {self.done}/{self.total} ({100 * self.done // self.total}%), "
                f"{elapsed:.0f} s elapsed, ETA {remaining:.0f} s",
                file=self.stream,
                flush=True,
            )
            while self.next_percent * self.total <= 100 * self.done:
                self.next_percent += 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _failed_row(head: dict[str, Any], err: Exception, command: str) -> dict[str, Any]:
    """The row of an utterance that could not be scored; reported on stderr."""
    file = err.file if isinstance(err, UtteranceError) and err.file is not None else head["mixture"]
    reason = str(err) if isinstance(err, (UtteranceError, ValueError, OSError)) else f"{type(err).__name__}: {err}"
    print(f"sepkit {command}: {head['id']}: {reason}", file=sys.stderr)
    return {**head, "status": FAILED, "reason": reason, "file": str(file), "silent_references": []}


def _single_threaded_worker() -> None:
    """Worker start-up: one torch thread each, so that N workers use N cores instead of
    each spreading over all of them (the parallelism is across utterances). Set once per
    worker and never changed back: with torch 2.13's CPU build, setting the thread count
    and then restoring it breaks later batched ``torch.linalg.solve`` (BSS-eval)."""
    torch.set_num_threads(1)


# Imported once by the fork server, so that each worker starts as a fork of a process
# that already holds them (a spawned worker spends seconds importing torch and scipy).
WORKER_PRELOAD = ("sepkit.evaluation", "fast_bss_eval", "pesq", "pystoi")


def worker_context() -> multiprocessing.context.BaseContext:
    """Start method of the scoring workers: ``forkserver`` where the platform has it, else
    ``spawn``. Never a plain fork of this process: forked children of a process that has
    run torch's thread pools (the model's forward pass) can hang; the fork server has only
    imported the modules of :data:`WORKER_PRELOAD` (an absent one is skipped)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_PRELOAD))  # no effect once the server runs
    return context


def score_all(
    items: Iterable[tuple[dict[str, Any], ScoringJob | Exception]], total: int, jobs: int, command: str
) -> list[dict[str, Any]]:
    """Score ``items`` (a row head with ``id``, ``mixture`` and ``index``, and the job or
    the error that already failed the utterance), in their order.

    With ``jobs > 1`` the scoring runs in that many worker processes while ``items`` is
    still being produced (the model's forward pass stays in this process); a bounded
    number of utterances is in flight, so memory does not grow with the data set.
    """
    rows: list[dict[str, Any]] = []
    report = ProgressReport(f"sepkit {command}", total)

    def finish(head: dict[str, Any], outcome: Future | ScoringJob | Exception) -> None:
        try:
            if isinstance(outcome, Exception):
                raise outcome
            rows.append({**head, **(outcome.result() if isinstance(outcome, Future) else score_job(outcome))})
        except Exception as err:  # one utterance's problem; the others still count
            rows.append(_failed_row(head, err, command))
        report.advance()

    try:
        if jobs == 1:
            for head, job in items:
                finish(head, job)
            return rows
        with ProcessPoolExecutor(jobs, mp_context=worker_context(), initializer=_single_threaded_worker) as pool:
            pending: deque[tuple[dict[str, Any], Future | Exception]] = deque()
            for head, job in items:
                pending.append((head, job if isinstance(job, Exception) else pool.submit(score_job, job)))
                while len(pending) > 4 * jobs:
                    finish(*pending.popleft())
            while pending:
                finish(*pending.popleft())
        return rows
    finally:
        report.close()


# --- sepkit evaluate: a checkpoint on a test set ----------------------------------------


def evaluation_items(
    model: torch.nn.Module,
    dataset: SegmentedDataset,
    metrics: tuple[str, ...],
    chunk_seconds: float | None = None,
    silent_reference_db: float = SILENT_REFERENCE_DB,
) -> Iterator[tuple[dict[str, Any], ScoringJob | Exception]]:
    """For each utterance of ``dataset`` in order: its row head and its scoring job (the
    model's estimates of it), or the error that stops it from being scored."""
    for index in range(len(dataset)):
        utterance = describe_utterance(dataset, index)
        head = {"id": utterance.id, "mixture": str(utterance.origin), "index": index}
        try:
            mixture, references = load_utterance(dataset, index, utterance, model.sample_rate, model.n_src)
            estimates = separate(model, mixture, chunk_seconds=chunk_seconds).cpu()
            if not torch.isfinite(estimates).all():
                raise UtteranceError("model output is not finite (NaN or Inf)")
        except Exception as err:
            yield head, err
            continue
        job = ScoringJob(
            estimates.double().numpy(),
            references.double().numpy(),
            mixture.double().numpy(),
            model.sample_rate,
            metrics,
            silent_reference_db,
        )
        yield head, job


def evaluate_dataset(
    model: torch.nn.Module,
    dataset: SegmentedDataset,
    metrics: tuple[str, ...] = CHEAP_METRICS,
    chunk_seconds: float | None = None,
    silent_reference_db: float = SILENT_REFERENCE_DB,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Score every utterance of ``dataset``; one that cannot be scored is reported on
    stderr and kept as a ``failed`` row, and the rest go on.

    Returns:
        One row per utterance in dataset order: ``id``, ``mixture``, ``index``,
        ``status`` and the fields of :func:`score_job` (or ``reason`` and ``file``).
    """
    items = evaluation_items(model, dataset, metrics, chunk_seconds, silent_reference_db)
    return score_all(items, len(dataset), jobs, "evaluate")


# --- reports: summary, CSV, examples, plots ---------------------------------------------


def package_versions() -> dict[str, str]:
    """Versions of sepkit, Python and the installed packages a score depends on."""
    versions = {"sepkit": sepkit.__version__, "python": platform.python_version()}
    for name in SCORING_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def summarize(
    rows: list[dict[str, Any]],
    metrics: tuple[str, ...],
    silent_reference_db: float = SILENT_REFERENCE_DB,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Statistics (:func:`sepkit.metrics.summarize_metric`: n, mean, median, std,
    bootstrap 95% CI) of each metric's separated, input and improvement values over the
    scored utterances; the counts; the undefined, excluded and failed utterances with
    their reasons; and ``provenance`` (what was scored, with which versions, when)."""
    scored = [row for row in rows if row["status"] == SCORED]
    summary: dict[str, Any] = {
        "n_utterances": len(rows),
        "n_scored": len(scored),
        "n_excluded": sum(row["status"] == EXCLUDED for row in rows),
        "n_failed": sum(row["status"] == FAILED for row in rows),
        "metrics": {
            name: {
                what: summarize_metric([row[field][name] for row in scored])
                for what, field in (("separated", "values"), ("input", "inputs"), ("improvement", "improvements"))
            }
            for name in metrics
        },
        "undefined": [
            {"id": row["id"], "metric": name, "reason": reason}
            for row in scored
            for name, reason in row["flags"].items()
        ],
        "silent_reference_db": silent_reference_db,
        "excluded": [{"id": row["id"], "reason": row["reason"]} for row in rows if row["status"] == EXCLUDED],
        "failed": [
            {"id": row["id"], "file": row["file"], "reason": row["reason"]} for row in rows if row["status"] == FAILED
        ],
    }
    summary.update(provenance or {})
    return summary


def metric_columns(name: str) -> tuple[str, str, str]:
    """The CSV columns of one metric: input value, separated value, improvement."""
    return f"input_{name}", name, f"{name}_improvement"


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def write_results(
    out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any], metrics: tuple[str, ...]
) -> tuple[Path, Path]:
    """Write ``per_utterance.csv`` (csv module; empty cells where a value is undefined)
    and ``summary.json`` (strict JSON) atomically; return their paths."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [column for name in metrics for column in metric_columns(name)]
    writer.writerow(["id", "mixture", "status", "permutation", *columns, "flags", "silent_references", "reason"])
    for row in rows:
        cells: list[str] = []
        for name in metrics:
            for field in ("inputs", "values", "improvements"):
                cells.append(_cell(row[field][name]) if field in row else "")
        permutation = " ".join(str(index + 1) for index in row.get("permutation") or [])
        flags = "; ".join(f"{name}: {reason}" for name, reason in row.get("flags", {}).items())
        writer.writerow(
            [
                row["id"],
                row["mixture"],
                row["status"],
                permutation,
                *cells,
                flags,
                " ".join(row["silent_references"]),
                row["reason"],
            ]
        )
    csv_path, json_path = out_dir / "per_utterance.csv", out_dir / "summary.json"
    write_text_atomic(csv_path, buffer.getvalue())
    # allow_nan=False: a NaN that slipped through is an error here, never invalid JSON on disk
    write_text_atomic(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def ranking_metric(metrics: tuple[str, ...]) -> str:
    """The metric examples and plots rank by: SI-SDR when it was computed."""
    return "si_sdr" if "si_sdr" in metrics else metrics[0]


def pick_examples(rows: list[dict[str, Any]], metric: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The ``count`` worst, median and best scored rows by ``metric``'s improvement (its
    value when there are no improvements), as ``(label, row)``, each row once."""
    field = (
        "improvements"
        if any(row["improvements"][metric] is not None for row in rows if "improvements" in row)
        else "values"
    )
    ranked = sorted(
        (row for row in rows if row["status"] == SCORED and row[field][metric] is not None),
        key=lambda row: row[field][metric],
    )
    if not ranked or count <= 0:
        return []
    middle = max(0, len(ranked) // 2 - count // 2)
    groups = {
        "best": ranked[::-1][:count],
        "median": ranked[middle : middle + count],
        "worst": ranked[:count],
    }
    chosen: list[tuple[str, dict[str, Any]]] = []
    seen: set[int] = set()
    for label, group in groups.items():
        for rank, row in enumerate(group, start=1):
            if id(row) not in seen:
                seen.add(id(row))
                chosen.append((f"{label}{rank}", row))
    return chosen


def safe_name(text: str) -> str:
    """A file-name-safe form of an utterance id, unique by a short hash of the id."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text)[:60]}-{digest}"


def save_examples(
    out_dir: Path,
    examples: list[tuple[str, dict[str, Any]]],
    signals_of: Callable[[dict[str, Any]], tuple[np.ndarray | None, np.ndarray, np.ndarray, int]],
) -> list[Path]:
    """Write each example's mixture, references ``s<i>.wav`` and matched estimates
    ``estimate_s<i>.wav`` (the estimate PIT matched to reference ``s<i>``), float WAV, and
    its scores as ``scores.json``, under ``out_dir/examples/<label>_<id>/``.

    ``signals_of(row)`` reads the example again: ``(mixture [time] or None, references
    [n_src, time], estimates [n_src, time], sample rate)``. An example that cannot be read again is
    reported and skipped.
    """
    folders: list[Path] = []
    for label, row in examples:
        folder = out_dir / "examples" / f"{label}_{safe_name(row['id'])}"
        try:
            mixture, references, estimates, sample_rate = signals_of(row)
            folder.mkdir(parents=True, exist_ok=True)
            if mixture is not None:
                write_audio_atomic(folder / "mixture.wav", mixture, sample_rate, subtype="FLOAT")
            for i, source in enumerate(references):
                write_audio_atomic(folder / f"s{i + 1}.wav", source, sample_rate, subtype="FLOAT")
                matched = estimates[row["permutation"][i]]
                write_audio_atomic(folder / f"estimate_s{i + 1}.wav", matched, sample_rate, subtype="FLOAT")
        except Exception as err:  # an example is a convenience; the scores are already written
            print(f"sepkit: example {row['id']} not saved: {err}", file=sys.stderr)
            continue
        scores = {
            key: row[key] for key in ("id", "mixture", "permutation", "values", "inputs", "improvements", "flags")
        }
        scores["example"] = label
        write_text_atomic(folder / "scores.json", json.dumps(scores, indent=2, allow_nan=False) + "\n")
        folders.append(folder)
    return folders


def _save_figure(figure: Any, path: Path) -> None:
    """Render a matplotlib figure to PNG and write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


SPECTROGRAM_RANGE_DB = 100.0


def power_db(power: np.ndarray, range_db: float = SPECTROGRAM_RANGE_DB) -> np.ndarray:
    """``10 log10`` of a power spectrogram ``[frequency, frame]``, floored ``range_db`` below
    its peak (and at the smallest positive float for an all-zero one), so that silence
    shows as the floor instead of ``-inf`` with a divide-by-zero warning."""
    floor = max(float(power.max(initial=0.0)) * 10 ** (-range_db / 10), np.finfo(np.float64).tiny)
    return 10 * np.log10(np.maximum(power, floor))


def write_plots(out_dir: Path, rows: list[dict[str, Any]], metric: str, example_folders: list[Path]) -> list[Path]:
    """PNG plots under ``out_dir/plots/``: the histogram of ``metric``'s improvement, the
    improvement against the input value, and the spectrograms of each saved example.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib import mlab
    from matplotlib.figure import Figure  # object-oriented: no pyplot, no global backend

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pairs = [
        (row["inputs"][metric], row["improvements"][metric])
        for row in rows
        if row["status"] == SCORED and row["improvements"][metric] is not None
    ]
    if pairs:
        inputs, improvements = np.array(pairs).T
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        axes.hist(improvements, bins=min(50, max(10, len(improvements) // 5)))
        axes.set(xlabel=f"{metric} improvement (dB)", ylabel="utterances", title=f"{len(improvements)} utterances")
        _save_figure(figure, plots / f"{metric}_improvement_histogram.png")
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        axes.scatter(inputs, improvements, s=8)
        axes.set(xlabel=f"input {metric} (dB)", ylabel=f"{metric} improvement (dB)")
        _save_figure(figure, plots / f"{metric}_improvement_vs_input.png")
        written += [plots / f"{metric}_improvement_histogram.png", plots / f"{metric}_improvement_vs_input.png"]
    for folder in example_folders:
        # mixture, then each reference above the estimate matched to it
        files = sorted(
            folder.glob("*.wav"),
            key=lambda path: (path.stem != "mixture", path.stem.removeprefix("estimate_"), path.stem),
        )
        figure = Figure(figsize=(8, 2 * len(files)))
        for number, path in enumerate(files, start=1):
            samples, sample_rate = sf.read(str(path), dtype="float64")
            axes = figure.add_subplot(len(files), 1, number)
            power, frequencies, times = mlab.specgram(samples, NFFT=256, Fs=sample_rate, noverlap=192)
            axes.pcolormesh(times, frequencies, power_db(power), shading="auto")
            axes.set(title=path.stem, ylabel="Hz", xlabel="s" if number == len(files) else None)
        figure.tight_layout()
        _save_figure(figure, plots / f"spectrograms_{folder.name}.png")
        written.append(plots / f"spectrograms_{folder.name}.png")
    return written


def format_table(summary: dict[str, Any]) -> str:
    """The metric table of a ``summary.json``: mean [95% CI] of the separated value and of
    the improvement, the input mean, median and std, and n per metric."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def with_ci(stats: dict[str, Any]) -> str:
        if stats.get("mean") is None:
            return "-"
        return f"{number(stats['mean'])} [{number(stats.get('ci_low'))}, {number(stats.get('ci_high'))}]"

    header = f"{'metric':<10} {'n':>5} {'input':>8} {'separated [95% CI]':>26} {'improvement [95% CI]':>26} {'median':>8} {'std':>7}"
    lines = [header, "-" * len(header)]
    for name, stats in summary["metrics"].items():
        separated, improvement = stats["separated"], stats["improvement"]
        lines.append(
            f"{name:<10} {separated.get('n', 0):>5} {number(stats['input'].get('mean')):>8} "
            f"{with_ci(separated):>26} {with_ci(improvement):>26} {number(separated.get('median')):>8} "
            f"{number(separated.get('std')):>7}"
        )
    lines.append(
        f"{summary['n_scored']} of {summary['n_utterances']} utterances scored, "
        f"{summary['n_excluded']} excluded, {summary['n_failed']} failed"
    )
    return "\n".join(lines)


def _check_out_dir(out_dir: Path, inputs: list[Path]) -> None:
    """Create ``out_dir`` and prove it writable before any work; refuse outputs that
    would replace an input."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise ValueError(f"{out_dir}: output folder is not writable ({err.strerror or err})") from err
    for name in ("per_utterance.csv", "summary.json"):
        if any((out_dir / name).resolve() == path.resolve() for path in inputs):
            raise ValueError(f"{out_dir / name}: output would overwrite an input")


def _open_dataset(data: Path, mixture_folder: str, sample_rate: int, n_src: int) -> SegmentedDataset:
    """A written split folder or a mixture table; raises ``ValueError``/``OSError`` naming
    the file when it holds no mixture. Rates are checked per utterance (by the folder
    reader, or by :func:`load_utterance` for table rows), so one odd item cannot stop the run."""
    if data.is_dir():
        return WrittenMixtureDataset(data, n_src, mixture_folder, sample_rate=sample_rate)
    try:
        dataset = MixtureTableDataset(data)
    except UnicodeDecodeError as err:
        raise ValueError(f"{data}: not a text mixture table ({err.reason})") from err
    if len(dataset) == 0:
        raise ValueError(f"{data}: mixture table has no mixtures")
    return dataset


def _number(text: str) -> float:
    """``float(text)``, NaN for text that is no number (refused like NaN itself)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _positive_seconds(text: str) -> float:
    """argparse type of ``--chunk-seconds``: a finite number > 0."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number of seconds, got {text}")
    return value


def _threshold_db(text: str) -> float:
    """argparse type of ``--silent-reference-db``: a finite number <= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value <= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of dB <= 0, got {text}")
    return value


def _job_count(text: str) -> int:
    """argparse type of ``--jobs``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of worker processes >= 1, got {text}")
    return value


def _example_count(text: str) -> int:
    """argparse type of ``--save-examples``: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def data_name(path: Path) -> str:
    """A folder name for a data set that no other data set shares: the table's stem (or the
    folder's name) and a short hash of its resolved path."""
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    stem = resolved.stem if resolved.is_file() else resolved.name
    return f"{stem or 'data'}-{digest}"


def run_folder(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to: the folder above ``checkpoints/`` when it is in
    one (``sepkit train``'s layout), else the checkpoint's own folder."""
    parent = checkpoint.absolute().parent
    return parent.parent if parent.name == "checkpoints" else parent


def default_out_dir(source: str, resolved: Path, data: Path) -> Path:
    """``<run>/evaluation/<data name>`` for a checkpoint file; for a model folder or an
    ``hf://`` id, ``./evaluation/<model name>/<data name>``, never inside the model folder
    (a card's digest covers all its files, and a snapshot lives in the Hugging Face cache)."""
    from sepkit.hub import is_hub_id

    if is_hub_id(source):
        name = re.sub(r"[^A-Za-z0-9._@-]+", "--", source.removeprefix("hf:").strip("/"))
    elif Path(source).is_dir():
        name = Path(source).absolute().name
    else:
        return run_folder(resolved) / "evaluation" / data_name(data)
    return Path("evaluation") / name / data_name(data)


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``sepkit evaluate`` and ``sepkit score``."""
    parser.add_argument(
        "--metrics",
        type=parse_metrics,
        default=CHEAP_METRICS,
        help=f"comma-separated metrics from {', '.join(METRIC_NAMES)}, or all (default {','.join(CHEAP_METRICS)})",
    )
    parser.add_argument("--jobs", type=_job_count, default=1, help="worker processes that compute the metrics")
    parser.add_argument("--out-dir", default=None, help="where to write the reports (default: see below)")
    parser.add_argument(
        "--save-examples",
        type=_example_count,
        default=0,
        metavar="N",
        help="write the N best, median and worst utterances (by SI-SDR improvement) as wav files",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument(
        "--silent-reference-db",
        type=_threshold_db,
        default=SILENT_REFERENCE_DB,
        help="a reference at or below this energy relative to the mixture makes an utterance's metrics undefined "
        f"(default {SILENT_REFERENCE_DB:g} dB)",
    )


def finish_reports(
    command: str,
    args: argparse.Namespace,
    out_dir: Path,
    rows: list[dict[str, Any]],
    provenance: dict[str, Any],
    signals_of: Callable[[dict[str, Any]], tuple[np.ndarray | None, np.ndarray, np.ndarray, int]],
) -> int:
    """Summarise, write the CSV, the JSON, the examples and the plots, print the table;
    return the exit code (1 when an utterance failed)."""
    summary = summarize(rows, args.metrics, args.silent_reference_db, provenance)
    csv_path, json_path = write_results(out_dir, rows, summary, args.metrics)
    metric = ranking_metric(args.metrics)
    examples = save_examples(out_dir, pick_examples(rows, metric, args.save_examples), signals_of)
    if not args.no_plots:
        try:
            write_plots(out_dir, rows, metric, examples)
        except ImportError:
            print(
                f"sepkit {command}: plots skipped: matplotlib is not installed "
                "(pip install 'sepkit[eval]', or pass --no-plots)",
                file=sys.stderr,
            )
    print(format_table(summary))
    if summary["n_excluded"]:
        print(f"{summary['n_excluded']} excluded from the statistics (silent reference, see {json_path})")
    if summary["n_failed"]:
        print(f"{summary['n_failed']} failed (listed in {json_path})", file=sys.stderr)
    print(f"per-utterance results: {csv_path}; summary: {json_path}")
    return 1 if summary["n_failed"] else 0


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit evaluate",
        description="Separation metrics of a checkpoint on a test set, per utterance and summarised.",
        epilog=__doc__.partition("\n\n")[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="mixture-table CSV (rendered on the fly) or written split folder")
    parser.add_argument("--mixture-folder", default="mix", help="mixture folder name in a written split")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chunk-seconds", type=_positive_seconds, default=None, help="process long mixtures in overlapping chunks"
    )
    _add_report_arguments(parser)
    args = parser.parse_args(argv)

    from sepkit.checkpoint import load_model
    from sepkit.hub import is_hub_id, resolve_model_source

    data = Path(args.data)
    try:
        torch.device(args.device)
        # A checkpoint file, a model folder (SpeechBrain card, snapshot) or an hf:// id,
        # whatever load_model takes; the file or card folder it resolves to is what is hashed.
        checkpoint = resolve_model_source(args.checkpoint)
        if not checkpoint.exists():
            raise ValueError(f"{checkpoint}: checkpoint not found")
        if not data.exists():
            raise ValueError(f"{data}: no such mixture table or folder")
        out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args.checkpoint, checkpoint, data)
        check_metrics(args.metrics)  # a missing package is refused here, not per utterance
        _check_out_dir(out_dir, [checkpoint, data])
        model = load_model(checkpoint, map_location=args.device)
        dataset = _open_dataset(data, args.mixture_folder, model.sample_rate, model.n_src)
    except Exception as err:  # one line a person can act on, not a traceback
        print(f"sepkit evaluate: error: {err}", file=sys.stderr)
        return 2
    provenance = {
        "command": "evaluate",
        "checkpoint": args.checkpoint if is_hub_id(args.checkpoint) else str(checkpoint.absolute()),
        "checkpoint_sha256": sha256_model(checkpoint),
        "data": str(data.absolute()),
        "versions": package_versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    rows = evaluate_dataset(model, dataset, args.metrics, args.chunk_seconds, args.silent_reference_db, args.jobs)

    def signals_of(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        utterance = describe_utterance(dataset, row["index"])
        mixture, references = load_utterance(dataset, row["index"], utterance, model.sample_rate, model.n_src)
        estimates = separate(model, mixture, chunk_seconds=args.chunk_seconds).cpu()
        return mixture.numpy(), references.numpy(), estimates.numpy(), model.sample_rate

    return finish_reports("evaluate", args, out_dir, rows, provenance, signals_of)


# --- sepkit score: files written by any toolkit -----------------------------------------


@dataclass
class ScoredFiles:
    """The files of one utterance for ``sepkit score``: ``mixture`` is ``None`` without
    ``--mixtures``."""

    id: str
    references: list[Path]
    estimates: list[Path]
    mixture: Path | None


def reference_folders(references: Path) -> list[Path]:
    """``references/s1``, ``s2``, ... (consecutive from s1), the official dataset layout.

    Raises:
        ValueError: there is no ``s1`` folder.
    """
    folders = []
    while (references / f"s{len(folders) + 1}").is_dir():
        folders.append(references / f"s{len(folders) + 1}")
    if not folders:
        raise ValueError(f"{references}: no s1/ folder (expected the dataset layout s1/<name>.wav, s2/<name>.wav, ...)")
    return folders


def pair_files(estimates: Path, references: Path, mixtures: Path | None) -> list[ScoredFiles]:
    """Pair each reference utterance with its estimate files and mixture.

    References follow the official dataset layouts (``s1/<name>.wav``, ``s2/...``);
    estimates either the same layout under ``estimates`` (when ``estimates/s1`` exists) or
    ``sepkit separate``'s naming (``<stem>_s1.wav``, ``<stem>_s2.wav``, ... beside each
    other, sub-folders kept); mixtures are ``<mixtures>/<name>.wav``. Files that do not
    exist are paired anyway: scoring them fails that utterance, with the path.

    Raises:
        ValueError: no reference files.
    """
    folders = reference_folders(references)
    names = [path.relative_to(folders[0]) for path in list_audio_files(folders[0])]
    if not names:
        raise ValueError(f"{folders[0]}: no reference audio files")
    official = (estimates / "s1").is_dir()
    pairs = []
    for name in names:
        if official:
            estimate_files = [estimates / folder.name / name for folder in folders]
        else:
            estimate_files = [estimates / name.parent / f"{name.stem}_{folder.name}.wav" for folder in folders]
        pairs.append(
            ScoredFiles(
                str(name.with_suffix("")),
                [folder / name for folder in folders],
                estimate_files,
                mixtures / name if mixtures is not None else None,
            )
        )
    return pairs


def read_utterance_files(files: ScoredFiles) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, int]:
    """``(mixture [time] or None, references [n_src, time], estimates [n_src, time], rate)``.

    Raises:
        UtteranceError: a file is missing or unreadable, or the files differ in rate or length.
    """
    signals: dict[Path, np.ndarray] = {}
    rates: dict[Path, int] = {}
    paths = [*files.references, *files.estimates, *([files.mixture] if files.mixture is not None else [])]
    for path in paths:
        if not path.is_file():
            kind = "estimate" if path in files.estimates else "reference" if path in files.references else "mixture"
            raise UtteranceError(f"{path}: {kind} file not found", path)
        try:
            signals[path], rates[path] = read_audio(path)
        except ValueError as err:
            raise UtteranceError(str(err), path) from err
    first = files.references[0]
    for path in paths:
        if rates[path] != rates[first]:
            raise UtteranceError(
                f"{path}: sample rate {rates[path]} Hz, the reference {first} has {rates[first]} Hz", path
            )
        if len(signals[path]) != len(signals[first]):
            raise UtteranceError(
                f"length mismatch: {path} has {len(signals[path])} samples, the reference {first} has "
                f"{len(signals[first])}",
                path,
            )
    mixture = signals[files.mixture].astype(np.float64) if files.mixture is not None else None
    references = np.stack([signals[path] for path in files.references]).astype(np.float64)
    estimates = np.stack([signals[path] for path in files.estimates]).astype(np.float64)
    return mixture, references, estimates, rates[first]


def score_items(
    pairs: list[ScoredFiles], metrics: tuple[str, ...], silent_reference_db: float
) -> Iterator[tuple[dict[str, Any], ScoringJob | Exception]]:
    """Row head and scoring job (or the error) of each paired utterance, in order."""
    for index, files in enumerate(pairs):
        head = {"id": files.id, "mixture": str(files.mixture or ""), "index": index}
        try:
            mixture, references, estimates, rate = read_utterance_files(files)
        except UtteranceError as err:
            yield head, err
            continue
        yield head, ScoringJob(estimates, references, mixture, rate, metrics, silent_reference_db)


def score_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit score",
        description="The metrics and reports of `sepkit evaluate` for separated files written by any toolkit.\n\n"
        "References: DIR/s1/<name>.wav, DIR/s2/<name>.wav, ... (the official dataset layouts).\n"
        "Estimates: the same layout, or `sepkit separate`'s <name>_s1.wav, <name>_s2.wav, ...\n"
        "Mixtures: DIR/<name>.wav. Without --mixtures there are no input scores and no improvements.\n"
        "Default --out-dir: <estimates>/../evaluation/<estimates name>-<hash>/.",
        epilog=__doc__.partition("\n\n")[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--estimates", required=True, help="folder of separated files")
    parser.add_argument("--references", required=True, help="folder with s1/, s2/, ... reference files")
    parser.add_argument("--mixtures", default=None, help="folder of the mixtures <name>.wav (for improvements)")
    _add_report_arguments(parser)
    args = parser.parse_args(argv)

    estimates, references = Path(args.estimates), Path(args.references)
    mixtures = Path(args.mixtures) if args.mixtures else None
    out_dir = Path(args.out_dir) if args.out_dir else estimates.absolute().parent / "evaluation" / data_name(estimates)
    try:
        for folder, what in [(estimates, "estimates"), (references, "references"), (mixtures, "mixtures")]:
            if folder is not None and not folder.is_dir():
                raise ValueError(f"{folder}: no such {what} folder")
        check_metrics(args.metrics)  # a missing package is refused here, not per utterance
        pairs = pair_files(estimates, references, mixtures)
        inputs = [path for files in pairs for path in [*files.references, *files.estimates]]
        _check_out_dir(out_dir, inputs)
    except Exception as err:  # one line a person can act on, not a traceback
        print(f"sepkit score: error: {err}", file=sys.stderr)
        return 2
    if mixtures is None:
        print("sepkit score: no --mixtures: input scores and improvements are not reported", file=sys.stderr)
    provenance = {
        "command": "score",
        "estimates": str(estimates.absolute()),
        "references": str(references.absolute()),
        "mixtures": str(mixtures.absolute()) if mixtures is not None else None,
        "improvements": "reported" if mixtures is not None else "not reported: no --mixtures, so no input scores",
        "versions": package_versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    items = score_items(pairs, args.metrics, args.silent_reference_db)
    rows = score_all(items, len(pairs), args.jobs, "score")
    return finish_reports(
        "score", args, out_dir, rows, provenance, lambda row: read_utterance_files(pairs[row["index"]])
    )


# --- sepkit compare: two evaluations on the same utterances -----------------------------


def read_evaluation(path: Path) -> tuple[Path, list[str], dict[str, dict[str, str]]]:
    """``(csv path, columns, rows by id)`` of an evaluation folder or its per_utterance.csv.

    Raises:
        ValueError: no such file, not a per_utterance.csv, no rows, or an id twice.
    """
    csv_path = path / "per_utterance.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: not found (give an evaluation folder or its per_utterance.csv)")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if "id" not in columns:
            raise ValueError(f"{csv_path}: not a per_utterance.csv (no id column)")
        rows: dict[str, dict[str, str]] = {}
        for row in reader:
            if row["id"] in rows:
                raise ValueError(f"{csv_path}: utterance id {row['id']!r} appears twice")
            rows[row["id"]] = row
    if not rows:
        raise ValueError(f"{csv_path}: no utterances (an evaluation of an empty data set)")
    return csv_path, columns, rows


def compare_runs(
    a: dict[str, dict[str, str]], b: dict[str, dict[str, str]], metrics: list[str]
) -> dict[str, dict[str, Any]]:
    """Per metric, :func:`sepkit.metrics.paired_bootstrap` of the separated values of the
    utterances scored in both runs (B - A)."""
    common = [key for key in a if key in b]
    results = {}
    for name in metrics:
        pairs = [
            (float(a[key][name]), float(b[key][name]))
            for key in common
            if a[key][name] and b[key][name] and a[key].get("status", SCORED) == b[key].get("status", SCORED) == SCORED
        ]
        results[name] = paired_bootstrap([x for x, _ in pairs], [y for _, y in pairs])
    return results


def compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit compare",
        description="Paired comparison of two evaluations (evaluation folders or their per_utterance.csv) on the "
        "utterances both scored: per metric the mean difference B - A, its paired bootstrap 95% CI and the "
        "fraction of utterances B improves.",
    )
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--out", default=None, help="compare.json path (default: compare.json in RUN_B's folder)")
    args = parser.parse_args(argv)
    try:
        path_a, columns_a, rows_a = read_evaluation(Path(args.run_a))
        path_b, columns_b, rows_b = read_evaluation(Path(args.run_b))
        out = Path(args.out) if args.out else path_b.parent / "compare.json"
        if out.absolute() in (path_a.absolute(), path_b.absolute()):
            raise ValueError(f"{out}: output would overwrite an input")
        metrics = [name for name in METRIC_NAMES if name in columns_a and name in columns_b]
        if not metrics:
            raise ValueError(f"{path_a} and {path_b} have no metric in common")
        common = [key for key in rows_a if key in rows_b]
        if not common:
            raise ValueError(f"{path_a} and {path_b} have no utterance id in common")
    except Exception as err:
        print(f"sepkit compare: error: {err}", file=sys.stderr)
        return 2
    results = compare_runs(rows_a, rows_b, metrics)
    report = {
        "run_a": str(path_a.absolute()),
        "run_b": str(path_b.absolute()),
        "n_common": len(common),
        "only_in_a": [key for key in rows_a if key not in rows_b],
        "only_in_b": [key for key in rows_b if key not in rows_a],
        "metrics": results,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(out, json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_comparison(report))
    print(f"comparison: {out}")
    return 0


def format_comparison(report: dict[str, Any]) -> str:
    """The table of a ``compare.json``: per metric the pairs, the mean difference B - A
    with its paired bootstrap CI, and the fraction of utterances B improves."""

    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = f"{'metric':<10} {'n':>5} {'B - A':>8} {'95% CI':>20} {'B better':>9}"
    lines = [header, "-" * len(header)]
    for name, result in report["metrics"].items():
        interval = f"[{number(result['ci_low'])}, {number(result['ci_high'])}]"
        improved = "-" if result["fraction_improved"] is None else f"{100 * result['fraction_improved']:.1f}%"
        lines.append(f"{name:<10} {result['n']:>5} {number(result['mean_difference']):>8} {interval:>20} {improved:>9}")
    lines.append(
        f"{report['n_common']} utterances in both runs, {len(report['only_in_a'])} only in A, "
        f"{len(report['only_in_b'])} only in B"
    )
    return "\n".join(lines)


def table_main(argv: list[str]) -> int:
    """``python -m sepkit.evaluation table SUMMARY_JSON``: print a summary's metric table."""
    path = Path(argv[0]) if argv else None
    try:
        if path is None:
            raise ValueError("usage: python -m sepkit.evaluation table SUMMARY_JSON")
        summary = json.loads(path.read_text())
        print(format_table(summary))
    except (OSError, ValueError, KeyError) as err:
        print(f"sepkit evaluation table: error: {path}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        sys.exit(table_main(sys.argv[2:]))
    sys.exit(evaluate_main(sys.argv[1:]))
