"""Separation of arbitrary audio with a trained model, and the ``sepkit separate`` command."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from sepkit.audio import (
    AudioError,
    list_audio_files,
    read_audio,
    require_finite,
    resample,
    write_audio_atomic,
)
from sepkit.fileio import remove_stale_temp_files, write_text_atomic
from sepkit.losses import best_permutation, pairwise_si_sdr

# Below this many samples (at the model's rate) there is nothing meaningful to separate.
MIN_SECONDS = 0.01
# Overlap between chunks with --chunk-seconds.
CHUNK_OVERLAP = 0.25
# What `sepkit separate` wrote into an output folder, and from what: the skip check of a
# rerun, and the list of its own outputs that a rerun must not take as inputs.
MANIFEST_NAME = ".sepkit-separate.json"
# Longest file name (in bytes) that common file systems (ext4, XFS, APFS, NTFS) accept.
MAX_NAME_BYTES = 255


class SeparationError(ValueError):
    """One input cannot be separated (e.g. the model's output is not finite); names the file."""


@torch.no_grad()
def separate(
    model: torch.nn.Module,
    mixture: torch.Tensor,
    chunk_seconds: float | None = None,
    overlap: float = CHUNK_OVERLAP,
) -> torch.Tensor:
    """Separate one mixture ``[time]`` (at the model's rate) into ``[n_src, time]``.

    With ``chunk_seconds`` the input is processed in overlapping windows (bounded
    memory for long recordings). Each window's outputs are permuted to agree with the
    previous window on their shared samples (the permutation maximising SI-SDR on the
    overlap), then cross-faded with a linear ramp.
    """
    device = next(model.parameters()).device
    mixture = mixture.to(device=device, dtype=torch.float32)
    length = mixture.shape[-1]
    if chunk_seconds is None or length <= int(chunk_seconds * model.sample_rate):
        return model(mixture.unsqueeze(0))[0]
    size = int(chunk_seconds * model.sample_rate)
    shared = int(size * overlap)
    if shared < 1:
        raise ValueError("overlap must leave at least one shared sample between chunks")
    hop = size - shared
    output = torch.zeros(model.n_src, length, device=device)
    fade_in = torch.linspace(0, 1, shared + 2, device=device)[1:-1]
    previous_tail: torch.Tensor | None = None
    for start in range(0, length, hop):
        stop = min(start + size, length)
        estimate = model(mixture[start:stop].unsqueeze(0))[0]
        if previous_tail is not None:
            n = min(shared, stop - start)
            # Align this chunk's source order with what has already been written.
            scores = pairwise_si_sdr(estimate[None, :, :n], previous_tail[None, :, :n])
            estimate = estimate[best_permutation(scores)[0]]
            ramp = fade_in[:n]
            output[:, start : start + n] = output[:, start : start + n] * (1 - ramp) + estimate[:, :n] * ramp
            output[:, start + n : stop] = estimate[:, n:]
        else:
            output[:, start:stop] = estimate
        if stop == length:
            break
        previous_tail = estimate[:, hop:]
    return output


def separate_file(
    model: torch.nn.Module,
    path: Path,
    targets: list[Path],
    channel_policy: str = "mix",
    chunk_seconds: float | None = None,
    subtype: str = "FLOAT",
) -> None:
    """Separate one audio file into ``targets`` (one per source, in order) at the
    file's own sample rate. Nothing is written unless every source is finite.

    Raises:
        AudioError: unreadable, empty, too-short or non-finite input, naming the file.
        SeparationError: the model's output holds NaN or infinity.
    """
    samples, rate = read_audio(path, channel_policy=channel_policy)
    require_finite(samples, path, what="input audio")
    at_model_rate = resample(samples.astype(np.float64), rate, model.sample_rate, source=path)
    if len(at_model_rate) < max(MIN_SECONDS * model.sample_rate, 1):
        raise AudioError(
            f"{path}: too short to separate ({len(samples)} samples at {rate} Hz; "
            f"need at least {MIN_SECONDS * 1000:.0f} ms)"
        )
    estimate = separate(model, torch.from_numpy(at_model_rate).float(), chunk_seconds=chunk_seconds)
    if not bool(torch.isfinite(estimate).all()):
        raise SeparationError(f"{path}: the model output holds NaN or infinity; nothing written for this file")
    estimate = resample(estimate.cpu().double().numpy(), model.sample_rate, rate, source=path)[:, : len(samples)]
    for target, source in zip(targets, estimate):
        write_audio_atomic(target, source.astype(np.float32), rate, subtype=subtype)


@dataclass
class Job:
    """One input file and the outputs planned for it (``error`` set: it will not be run)."""

    source: Path
    out_folder: Path
    targets: list[Path] = field(default_factory=list)
    error: str | None = None


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _manifest_outputs(manifest_path: Path) -> set[Path]:
    """Resolved paths of every output a manifest records (empty if unreadable)."""
    manifest = _read_manifest(manifest_path)
    return {_resolved(manifest_path.parent / name) for entry in manifest.values() for name in entry.get("outputs", [])}


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no manifest (or a damaged one): nothing counts as done
    entries = data.get("inputs") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def plan_jobs(inputs: list[str], out_dir: Path, n_src: int) -> list[Job]:
    """Expand the command line's files and folders into jobs with output paths.

    A file found in folder ``F`` given on the command line at ``F/sub/x.flac`` writes
    ``<out_dir>/sub/x_s1.wav``, ...; a file given directly writes into ``out_dir``.
    Files with the same stem in one output folder (``clip.flac``, ``clip.ogg``) keep
    their suffix: ``clip.flac_s1.wav``. Files that an earlier ``sepkit separate``
    recorded as its outputs (in any manifest under a searched folder, or in
    ``out_dir``'s) are not inputs. A job whose output would replace an input, or an
    output already planned for another input, or needs a name too long for the file
    system, gets an ``error`` instead of running.
    """
    previous_outputs = _manifest_outputs(out_dir / MANIFEST_NAME)
    jobs: list[Job] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            jobs.append(Job(item, out_dir))
            continue
        for manifest in item.rglob(MANIFEST_NAME):
            previous_outputs |= _manifest_outputs(manifest)
        for path in list_audio_files(item):
            if _resolved(path) not in previous_outputs:
                jobs.append(Job(path, out_dir / path.relative_to(item).parent))
    stems: dict[tuple[Path, str], int] = {}
    for job in jobs:
        key = (job.out_folder, job.source.stem)
        stems[key] = stems.get(key, 0) + 1
    input_paths = {_resolved(job.source): job.source for job in jobs}
    claimed: dict[Path, Path] = {}
    for job in jobs:
        stem = job.source.name if stems[(job.out_folder, job.source.stem)] > 1 else job.source.stem
        job.targets = [job.out_folder / f"{stem}_s{i + 1}.wav" for i in range(n_src)]
        for target in job.targets:
            resolved = _resolved(target)
            if len(os.fsencode(target.name)) > MAX_NAME_BYTES:
                job.error = f"{job.source}: output name {target.name!r} would exceed {MAX_NAME_BYTES} bytes"
            elif resolved in input_paths:
                job.error = f"{job.source}: output {target} would overwrite the input {input_paths[resolved]}"
            elif resolved in claimed:
                job.error = f"{job.source}: output {target} is already the output of {claimed[resolved]}"
            if job.error:
                break
        if job.error is None:
            claimed.update({_resolved(target): job.source for target in job.targets})
    return jobs


def _file_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of every file (with its relative name) in a model
    folder such as a SpeechBrain model card, so any change to the model changes it."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _usage_error(message: str) -> int:
    print(f"sepkit separate: error: {message}", file=sys.stderr)
    return 2


def _option_errors(args: argparse.Namespace) -> str | None:
    """The first invalid option value, as a message; None if all are usable."""
    if args.chunk_seconds is not None and not (math.isfinite(args.chunk_seconds) and args.chunk_seconds > 0):
        return f"--chunk-seconds must be a positive number of seconds, got {args.chunk_seconds}"
    if not sf.check_format("WAV", args.subtype):
        return f"--subtype {args.subtype} cannot be written to wav; choose one of {', '.join(sf.available_subtypes('WAV'))}"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        return f"--device {args.device}: no such CUDA device on this machine"
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        return f"output folder {out_dir} is not writable ({err.strerror or err})"
    return None


def _process(
    job: Job,
    model: torch.nn.Module,
    args: argparse.Namespace,
    out_dir: Path,
    settings: dict[str, Any],
    manifest: dict[str, dict[str, Any]],
) -> bool:
    """Separate one job unless the manifest shows its outputs are up to date; record
    it in the manifest (rewritten at once, so a killed run keeps what it finished).
    Returns whether it ran."""
    if job.error:
        raise SeparationError(job.error)
    if not job.source.is_file():
        raise AudioError(f"{job.source}: no such file")
    stat = job.source.stat()
    record = {
        **settings,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "outputs": [target.relative_to(out_dir).as_posix() for target in job.targets],
    }
    key = str(_resolved(job.source))
    previous = manifest.get(key)
    if (
        not args.overwrite
        and previous is not None
        and {name: previous.get(name) for name in record} == record
        and [target.stat().st_size if target.is_file() else None for target in job.targets]
        == previous.get("output_sizes")
    ):
        return False
    separate_file(model, job.source, job.targets, args.channels, args.chunk_seconds, args.subtype)
    record["output_sizes"] = [target.stat().st_size for target in job.targets]
    manifest[key] = record
    write_text_atomic(out_dir / MANIFEST_NAME, json.dumps({"inputs": manifest}, indent=1))
    return True


def separate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit separate",
        description="Separate audio files (wav/flac/ogg/mp3/..., any sample rate) into one wav file per source. "
        "Folders are searched recursively and their layout is mirrored under the output folder.",
    )
    parser.add_argument(
        "checkpoint",
        help="sepkit checkpoint (.ckpt from sepkit train, or a model file), a published model, "
        "or a Hugging Face model id hf://owner/name",
    )
    parser.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument("-o", "--out-dir", required=True, help="output folder for <stem>_s<i>.wav")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--channels",
        choices=["mix", "first"],
        default="mix",
        help="multi-channel input: average channels or keep the first",
    )
    parser.add_argument("--chunk-seconds", type=float, default=None, help="process long files in overlapping chunks")
    parser.add_argument("--subtype", default="FLOAT", help="soundfile subtype of the outputs (FLOAT keeps peaks > 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo files even if their outputs are up to date")
    args = parser.parse_args(argv)
    args.subtype = args.subtype.upper()

    from rich.progress import Progress

    from sepkit.checkpoint import CheckpointError, load_model
    from sepkit.hub import resolve_model_source

    problem = _option_errors(args)
    if problem:
        return _usage_error(problem)
    try:
        model = load_model(args.checkpoint, map_location=args.device)
    except CheckpointError as err:
        return _usage_error(str(err))
    if args.chunk_seconds is not None and int(args.chunk_seconds * model.sample_rate * CHUNK_OVERLAP) < 1:
        return _usage_error(
            f"--chunk-seconds {args.chunk_seconds} is shorter than a few samples at {model.sample_rate} Hz"
        )
    out_dir = Path(args.out_dir)
    jobs = plan_jobs(args.inputs, out_dir, model.n_src)
    if not jobs:
        print(f"sepkit separate: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    for folder in sorted({job.out_folder for job in jobs}):
        remove_stale_temp_files(folder)
    # Everything that changes the outputs of one input: its identity and content stamp
    # (added per file), the weights and the options.
    settings = {
        "checkpoint_sha256": _file_digest(resolve_model_source(args.checkpoint)),  # an hf:// id: its model file
        "channels": args.channels,
        "chunk_seconds": args.chunk_seconds,
        "subtype": args.subtype,
    }
    manifest = _read_manifest(out_dir / MANIFEST_NAME)
    failures: list[str] = []
    done = skipped = 0
    with Progress(transient=False) as progress:
        task = progress.add_task("separating", total=len(jobs))
        for job in jobs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    if _process(job, model, args, out_dir, settings, manifest):
                        done += 1
                    else:
                        skipped += 1
                except Exception as err:  # one bad input must not stop the batch
                    message = str(err) if isinstance(err, AudioError | SeparationError) else f"{job.source}: {err}"
                    failures.append(message)
                    progress.console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
            for warning in caught:
                progress.console.print(f"warning: {warning.message}", markup=False, highlight=False, soft_wrap=True)
            progress.advance(task)
    print(f"separated {done} file(s), skipped {skipped} already done, {len(failures)} failed -> {out_dir}")
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0
