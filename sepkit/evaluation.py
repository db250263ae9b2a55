"""``sepkit evaluate``: SI-SDR and SI-SDR improvement of a checkpoint on a test split,
per utterance (CSV) and summarised (JSON). Everything after this paragraph is also the
epilog of ``sepkit evaluate --help``.

Rules:

- **One bad utterance never stops the run.** An utterance that cannot be scored
  (missing, unreadable or corrupt audio, NaN/Inf samples, mixture and references of
  different lengths, a sample rate or source count the model does not handle, a
  non-finite model output or score) is reported on stderr with its id and file, listed
  under ``"failed"`` in ``summary.json`` with the reason, and makes the exit code 1;
  every other utterance is still scored and written. (A written folder whose
  ``s1 .. sN`` lack files for some mixtures is refused as a whole before any work, by
  the folder reader, with the count and an example.)
- **Silent references.** A reference source ``s_i`` whose energy (after removing its
  mean, as SI-SDR does) is at or below ``--silent-reference-db`` (default
  -40 dB) relative to the mixture's, i.e. ``10 log10(||s_i||^2 / ||x||^2) <= -40``, makes
  SI-SDR undefined for that utterance: matching an estimate to a (nearly) silent
  target measures the floating-point floor or the other sources' leakage, not
  separation, and one such utterance can move a mean by tens of dB. The utterance keeps its row in ``per_utterance.csv`` with
  empty metric cells and the silent sources in the ``silent_references`` column, is
  left out of every mean, and is listed under ``"excluded"`` in ``summary.json``.
- **Strict JSON.** ``summary.json`` never holds NaN or Inf; a mean is ``null`` when no
  utterance was scored (every utterance failed or was excluded).

Exit codes: 0 every utterance scored or excluded, 1 one or more utterances failed (the
others are written), 2 bad arguments or unusable input (nothing written).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import torch

from sepkit.audio import read_audio
from sepkit.data.datasets import MixtureTableDataset, SegmentedDataset, WrittenMixtureDataset
from sepkit.fileio import write_text_atomic
from sepkit.inference import separate
from sepkit.losses import pit_si_sdr, si_sdr

if TYPE_CHECKING:
    from rich.progress import Progress

SILENT_REFERENCE_DB = -40.0
METRICS = ("input_si_sdr", "si_sdr", "si_sdri")


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


@dataclass
class Failure:
    """An utterance that could not be scored."""

    id: str
    file: str
    reason: str


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


def score_utterance(
    estimate: torch.Tensor,
    mixture: torch.Tensor,
    references: torch.Tensor,
    silent_reference_db: float = SILENT_REFERENCE_DB,
) -> dict[str, Any]:
    """Metrics of one utterance (dB).

    Args:
        estimate: separated sources ``[n_src, time]``.
        mixture: input mixture ``x`` ``[time]``.
        references: reference sources ``s_i`` ``[n_src, time]``.
        silent_reference_db: a reference with ``10 log10(||s_i||^2 / ||x||^2)`` at or below
            this (mean-removed energies) is silent.

    Returns:
        ``input_si_sdr`` (SI-SDR of ``x`` against each ``s_i``, averaged), ``si_sdr`` (of
        the PIT-matched estimates, averaged), ``si_sdri`` (their difference), each
        ``None`` when a reference is silent, and ``silent_references`` (``["s2"]``, or
        ``[]``).

    Raises:
        UtteranceError: the estimate or a score is not finite.
    """
    if not torch.isfinite(estimate).all():
        raise UtteranceError("model output is not finite (NaN or Inf)")
    centred_references = references.double() - references.double().mean(-1, keepdim=True)
    centred_mixture = mixture.double() - mixture.double().mean()
    floor = centred_mixture.pow(2).sum() * 10 ** (silent_reference_db / 10)
    silent = [f"s{i + 1}" for i, energy in enumerate(centred_references.pow(2).sum(-1)) if energy <= floor]
    if silent:
        return {**dict.fromkeys(METRICS), "silent_references": silent}
    score, _ = pit_si_sdr(estimate.unsqueeze(0), references.unsqueeze(0))
    baseline = si_sdr(mixture.expand_as(references), references).mean()
    metrics = {"input_si_sdr": float(baseline), "si_sdr": float(score[0]), "si_sdri": float(score[0] - baseline)}
    if not all(math.isfinite(value) for value in metrics.values()):
        raise UtteranceError(f"score is not finite ({metrics})")
    return {**metrics, "silent_references": []}


def evaluate_dataset(
    model: torch.nn.Module,
    dataset: SegmentedDataset,
    chunk_seconds: float | None = None,
    progress: Progress | None = None,
    silent_reference_db: float = SILENT_REFERENCE_DB,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Score every utterance of ``dataset``; one that cannot be scored is reported on
    stderr and recorded as a :class:`Failure`, and the rest go on.

    Returns:
        ``(rows, failures)``: one row per scored or excluded utterance (``id`` and the
        fields of :func:`score_utterance`), in dataset order.
    """
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    task = progress.add_task("evaluating", total=len(dataset)) if progress is not None else None
    for index in range(len(dataset)):
        utterance = describe_utterance(dataset, index)
        try:
            mixture, references = load_utterance(dataset, index, utterance, model.sample_rate, model.n_src)
            estimate = separate(model, mixture, chunk_seconds=chunk_seconds).cpu()
            rows.append({"id": utterance.id, **score_utterance(estimate, mixture, references, silent_reference_db)})
        except Exception as err:  # any problem with one utterance; the others still count
            file = err.file if isinstance(err, UtteranceError) and err.file is not None else utterance.origin
            reason = str(err) if isinstance(err, UtteranceError) else f"{type(err).__name__}: {err}"
            failures.append(Failure(utterance.id, str(file), reason))
            print(f"sepkit evaluate: {utterance.id}: {reason}", file=sys.stderr)
        if task is not None:
            progress.advance(task)
    return rows, failures


def summarize(
    rows: list[dict[str, Any]], failures: list[Failure], silent_reference_db: float = SILENT_REFERENCE_DB
) -> dict[str, Any]:
    """Means over the scored utterances (``null`` when there are none), the counts, and
    the excluded and failed utterances with their reasons."""
    scored = [row for row in rows if not row["silent_references"]]
    excluded = [row for row in rows if row["silent_references"]]
    summary: dict[str, Any] = {
        "n_utterances": len(rows) + len(failures),
        "n_scored": len(scored),
        "n_excluded": len(excluded),
        "n_failed": len(failures),
    }
    for key in METRICS:
        summary[key] = sum(row[key] for row in scored) / len(scored) if scored else None
    summary["silent_reference_db"] = silent_reference_db
    summary["excluded"] = [
        {"id": row["id"], "reason": f"silent reference {' '.join(row['silent_references'])}"} for row in excluded
    ]
    summary["failed"] = [asdict(failure) for failure in failures]
    return summary


def write_results(out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``per_utterance.csv`` (metrics to 4 decimals, empty when undefined) and
    ``summary.json`` (strict JSON) atomically; return their paths."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", *METRICS, "silent_references"])
    for row in rows:
        cells = ["" if row[key] is None else f"{row[key]:.4f}" for key in METRICS]
        writer.writerow([row["id"], *cells, " ".join(row["silent_references"])])
    csv_path, json_path = out_dir / "per_utterance.csv", out_dir / "summary.json"
    write_text_atomic(csv_path, buffer.getvalue())
    # allow_nan=False: a NaN that slipped through is an error here, never invalid JSON on disk
    write_text_atomic(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


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


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit evaluate",
        description="SI-SDR(i) of a checkpoint on a test set.",
        epilog=__doc__.partition("\n\n")[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="mixture-table CSV (rendered on the fly) or written split folder")
    parser.add_argument("--mixture-folder", default="mix", help="mixture folder name in a written split")
    parser.add_argument("--out-dir", default=None, help="where to write per_utterance.csv and summary.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chunk-seconds", type=_positive_seconds, default=None, help="process long mixtures in overlapping chunks"
    )
    parser.add_argument(
        "--silent-reference-db",
        type=_threshold_db,
        default=SILENT_REFERENCE_DB,
        help="a reference at or below this energy relative to the mixture makes an utterance's SI-SDR undefined "
        f"(default {SILENT_REFERENCE_DB:g} dB)",
    )
    args = parser.parse_args(argv)

    from rich.progress import Progress

    from sepkit.checkpoint import load_model

    checkpoint, data = Path(args.checkpoint), Path(args.data)
    out_dir = Path(args.out_dir) if args.out_dir else checkpoint.parent / "evaluation"
    try:
        torch.device(args.device)
        if not checkpoint.is_file():
            raise ValueError(f"{checkpoint}: checkpoint not found")
        if not data.exists():
            raise ValueError(f"{data}: no such mixture table or folder")
        _check_out_dir(out_dir, [checkpoint, data])
        model = load_model(checkpoint, map_location=args.device)
        dataset = _open_dataset(data, args.mixture_folder, model.sample_rate, model.n_src)
    except Exception as err:  # one line a person can act on, not a traceback
        print(f"sepkit evaluate: error: {err}", file=sys.stderr)
        return 2
    with Progress() as progress:
        rows, failures = evaluate_dataset(model, dataset, args.chunk_seconds, progress, args.silent_reference_db)
    summary = summarize(rows, failures, args.silent_reference_db)
    csv_path, json_path = write_results(out_dir, rows, summary)
    if summary["n_scored"]:
        print(
            f"{summary['n_scored']} of {summary['n_utterances']} mixtures scored: "
            f"input SI-SDR {summary['input_si_sdr']:.2f} dB, separated {summary['si_sdr']:.2f} dB, "
            f"SI-SDR improvement {summary['si_sdri']:.2f} dB"
        )
    else:
        print(f"none of {summary['n_utterances']} mixtures could be scored")
    if summary["n_excluded"]:
        print(f"{summary['n_excluded']} excluded from the means (silent reference, see {json_path})")
    if failures:
        print(f"{len(failures)} failed (listed in {json_path})", file=sys.stderr)
    print(f"per-utterance results: {csv_path}; summary: {json_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(evaluate_main(sys.argv[1:]))
