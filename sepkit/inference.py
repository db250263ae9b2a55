"""Separation of arbitrary audio with a trained model, and the ``sepkit separate`` command."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from sepkit.allocator import release_freed_memory, unmap_large_buffers
from sepkit.audio import (
    AudioError,
    AudioWarning,
    clip_warning,
    clipped_samples,
    list_audio_files,
    open_audio_writer,
    read_audio_blocks,
    require_finite,
)
from sepkit.fileio import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_output,
    remove_stale_temp_files,
    sha256_model,
    write_text_atomic,
)
from sepkit.losses import best_permutation, pairwise_si_sdr
from sepkit.resample import StreamingResampler
from sepkit.streaming import LatencyTrimmed, StreamingError, StreamingSeparator, check_streamable

# Below this many samples (at the model's rate) there is nothing meaningful to separate.
MIN_SECONDS = 0.01
# Overlap between chunks, as a fraction of the chunk length.
CHUNK_OVERLAP = 0.25
# What `sepkit separate` wrote into an output folder, and from what: the skip check of a
# rerun, and the list of its own outputs that a rerun must not take as inputs.
MANIFEST_NAME = ".sepkit-separate.json"
# Longest file name (in bytes) that common file systems (ext4, XFS, APFS, NTFS) accept.
MAX_NAME_BYTES = 255
# Audio is read, resampled and written in blocks of this many seconds (at the file's rate).
BLOCK_SECONDS = 10.0
# A stretch of the stitched output is too quiet to decide a permutation when its mean
# square is below this fraction (-30 dB) of the energetic context it would replace, or
# below the absolute floor (digital silence).
SILENCE_RATIO = 1e-3
SILENCE_FLOOR = 1e-10
# Automatic chunking: the model's activations for one chunk (batch included) may use this
# fraction of the free accelerator memory, or of the available RAM on the CPU ...
MEMORY_BUDGET_FRACTION = 0.25
# ... and chunks are never longer than this (longer ones gain nothing in quality that
# the overlap does not already give, and keep memory predictable).
MAX_AUTO_CHUNK_SECONDS = 60.0
MIN_AUTO_CHUNK_SECONDS = 2.0
# ... and on the CPU no longer than this. A model's MACs per second of input are the same
# for any chunk length, but its time and memory are not: measured with Conv-TasNet
# (8 kHz, 2 threads, bench/inference.py), a forward pass costs about 0.05 s per second
# of input up to 4-6 s chunks and 0.13 s at 10 s, where its larger activations (20-40
# MiB each) fall out of the caches and out of the sizes glibc's malloc reuses (it hands
# them back to the kernel and faults them in again: 500k page faults per call); and the
# resident memory of `sepkit separate` grows with the chunk (a paper Conv-TasNet call
# adds about 6 MiB per second of chunk at its peak since the channels-last TCN; the
# whole command grew by about 25 MiB per second before it). 4 s is also the segment length the paper recipes train on (wsj0-2mix), so a
# chunk looks like a training example; its 25 % overlap is 1 s.
MAX_AUTO_CHUNK_SECONDS_CPU = 4.0
# Length of the probe input that measures the activation memory per second of a model.
PROBE_SECONDS = 2.0
# Peak of an output with --normalize peak.
NORMALIZED_PEAK = 0.9
NORMALIZE_CHOICES = ("none", "peak", "mixture-loudness")
# Output formats that --format offers (libsndfile names, lower case, as file suffixes).
OUTPUT_FORMATS = ("wav", "flac", "ogg", "mp3", "aiff", "caf", "w64", "rf64", "au")


class SeparationError(ValueError):
    """One input cannot be separated (e.g. the model's output is not finite); names the file."""


def _energy(x: torch.Tensor) -> float:
    """Mean square over every source and sample of ``[n_src, time]``."""
    return float(x.square().mean(dtype=torch.float64)) if x.numel() else 0.0


class ChunkStitcher:
    """Separate a mixture that arrives in blocks, in overlapping chunks, with bounded memory.

    Chunk ``k`` covers samples ``[k * hop, k * hop + size)`` (``hop = size - shared``).
    Its sources are put in the order of the output so far by the permutation that
    maximises SI-SDR against the previous chunk on their ``shared`` common samples, then
    cross-faded into it with a linear ramp. When that overlap is too quiet to decide
    (both speakers pause for longer than the overlap), the chunk is separated again
    behind the most recent energetic stretch of the mixture (the *context*) and matched
    on that stretch instead, so the order survives pauses of any length. Without a
    context yet (silence from the start) the model's order is kept.

    ``size=None`` separates the whole input in one pass at :meth:`finish`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        size: int | None,
        shared: int = 0,
        match_gain: bool = False,
        batch_chunks: int = 1,
    ) -> None:
        if size is not None and not 1 <= shared < size:
            raise ValueError("overlap must leave at least one shared sample between chunks")
        self.model = model
        self.device = next(model.parameters()).device
        self.size = size
        self.shared = shared
        self.hop = size - shared if size is not None else 0
        self.match_gain = match_gain
        self.batch_chunks = max(1, batch_chunks)
        # Mixture samples not yet consumed; the next chunk starts at its first sample.
        self.pending = torch.zeros(0, device=self.device)
        self.previous_tail: torch.Tensor | None = None  # [n_src, shared], output order
        self.context_mixture: torch.Tensor | None = None  # [window]
        self.context_sources: torch.Tensor | None = None  # [n_src, window], output order
        self.context_energy = 0.0  # mean square of context_sources

    def _run(self, mixtures: torch.Tensor) -> torch.Tensor:
        """Model on ``[batch, time]`` -> ``[batch, n_src, time]``, optionally gain-matched
        per chunk: all sources scaled by one factor so that their sum has the mixture's
        energy (ESPnet's ``normalize_segment_scale``)."""
        estimates = self.model(mixtures)
        if self.match_gain:
            mixture_norm = mixtures.double().norm(dim=-1)
            sum_norm = estimates.sum(dim=1).double().norm(dim=-1)
            scale = torch.where(sum_norm > 0, mixture_norm / sum_norm.clamp(min=1e-300), torch.ones_like(sum_norm))
            estimates = estimates * scale.to(estimates.dtype)[:, None, None]
        return estimates

    def _energetic(self, x: torch.Tensor) -> bool:
        """Whether sources ``[n_src, time]`` hold enough energy to decide a permutation on."""
        energy = _energy(x)
        return energy > SILENCE_FLOOR and energy >= SILENCE_RATIO * self.context_energy

    def _stitch(self, mixture: torch.Tensor, estimate: torch.Tensor, last: bool) -> torch.Tensor:
        """Order ``estimate`` ``[n_src, n]`` of chunk ``mixture`` ``[n]`` like the output, cross-fade
        it in and return the samples now final."""
        tail = self.previous_tail
        if tail is not None:
            n = min(self.shared, estimate.shape[-1])
            if self._energetic(tail[:, :n]):
                scores = pairwise_si_sdr(estimate[None, :, :n], tail[None, :, :n])
                estimate = estimate[best_permutation(scores)[0]]
            elif self.context_mixture is not None:
                # Separate the chunk again behind the context, match on the context and keep
                # this call's chunk part (its order is only known relative to the context).
                width = self.context_mixture.shape[-1]
                joint = self._run(torch.cat([self.context_mixture, mixture])[None])[0]
                scores = pairwise_si_sdr(joint[None, :, :width], self.context_sources[None])
                estimate = joint[best_permutation(scores)[0], width:]
            ramp = torch.linspace(0, 1, self.shared + 2, device=self.device)[1 : n + 1]
            estimate = estimate.clone()
            estimate[:, :n] = tail[:, :n] * (1 - ramp) + estimate[:, :n] * ramp
        self._update_context(mixture, estimate)
        if last:
            self.previous_tail = None
            return estimate
        self.previous_tail = estimate[:, self.hop :]
        return estimate[:, : self.hop]

    def _update_context(self, mixture: torch.Tensor, estimate: torch.Tensor) -> None:
        """Remember the latest energetic ``shared``-long stretch of this chunk (output order)."""
        width = min(self.shared, estimate.shape[-1])
        step = max(1, width // 2)
        for begin in range(estimate.shape[-1] - width, -1, -step):
            window = estimate[:, begin : begin + width]
            if self._energetic(window):
                self.context_mixture = mixture[begin : begin + width].clone()
                self.context_sources = window.clone()
                self.context_energy = _energy(window)
                return

    def _ready_chunks(self, finished: bool) -> list[tuple[torch.Tensor, bool]]:
        """Cut the chunks that can be separated now: ``(mixture [n], is_last)``."""
        chunks = []
        while True:
            available = self.pending.shape[-1]
            if available > self.size:  # more follows this chunk
                chunks.append((self.pending[: self.size], False))
                self.pending = self.pending[self.hop :]
            elif finished and available > 0:
                chunks.append((self.pending, True))
                self.pending = self.pending[:0]
                return chunks
            else:
                return chunks

    def _separate_ready(self, finished: bool) -> torch.Tensor:
        chunks = self._ready_chunks(finished)
        pieces = []
        for first in range(0, len(chunks), self.batch_chunks):
            group = chunks[first : first + self.batch_chunks]
            full = [mixture for mixture, _ in group if mixture.shape[-1] == self.size]
            estimates = list(self._run(torch.stack(full))) if full else []
            estimates += [self._run(mixture[None])[0] for mixture, _ in group[len(full) :]]
            for (mixture, last), estimate in zip(group, estimates):
                pieces.append(self._stitch(mixture, estimate, last))
        return torch.cat(pieces, dim=-1) if pieces else torch.zeros(self.model.n_src, 0, device=self.device)

    @torch.no_grad()
    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Take the next mixture samples ``[time]``; return the sources now final ``[n_src, k]``."""
        self.pending = torch.cat([self.pending, block.to(device=self.device, dtype=torch.float32)])
        if self.size is None:
            return torch.zeros(self.model.n_src, 0, device=self.device)
        return self._separate_ready(finished=False)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Separate what is left; return the remaining sources ``[n_src, k]``."""
        if self.size is None:
            whole, self.pending = self.pending, self.pending[:0]
            if whole.shape[-1] == 0:
                return torch.zeros(self.model.n_src, 0, device=self.device)
            return self._run(whole[None])[0]
        return self._separate_ready(finished=True)


@torch.no_grad()
def separate(
    model: torch.nn.Module,
    mixture: torch.Tensor,
    chunk_seconds: float | None = None,
    overlap: float = CHUNK_OVERLAP,
    match_gain: bool = False,
    batch_chunks: int = 1,
) -> torch.Tensor:
    """Separate one mixture ``[time]`` (at the model's rate) into ``[n_src, time]``.

    With ``chunk_seconds`` an input longer than one chunk is processed in overlapping
    windows and stitched by :class:`ChunkStitcher` (``overlap``: shared fraction of a
    chunk; ``match_gain``: per-chunk gain match; ``batch_chunks``: chunks per model call).
    """
    length = mixture.shape[-1]
    size = None
    if chunk_seconds is not None and length > int(chunk_seconds * model.sample_rate):
        size = int(chunk_seconds * model.sample_rate)
    stitcher = ChunkStitcher(
        model, size, int(size * overlap) if size else 0, match_gain=match_gain, batch_chunks=batch_chunks
    )
    return torch.cat([stitcher.push(mixture), stitcher.finish()], dim=-1)


def _available_memory(device: torch.device) -> int:
    """Bytes free for activations: free accelerator memory, or MemAvailable of the host."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # no /proc (macOS, Windows): assume a modest machine


@torch.no_grad()
def auto_chunk_seconds(model: torch.nn.Module, batch_chunks: int = 1) -> float:
    """Chunk length for inputs separated without ``--chunk-seconds``.

    The rule: measure the model's peak activation memory ``A`` for a ``P``-second input
    (:func:`sepkit.profiling.peak_activation_bytes`; ``P`` is ``PROBE_SECONDS``, or
    ``MAX_AUTO_CHUNK_SECONDS_CPU`` on the CPU), take ``A / P`` bytes per second of input (activations of these
    models grow linearly with length) and let one model call (``batch_chunks`` chunks)
    use ``MEMORY_BUDGET_FRACTION`` of the memory available on the model's device;
    the result is clamped to ``[MIN_AUTO_CHUNK_SECONDS, MAX_AUTO_CHUNK_SECONDS]``
    (``MAX_AUTO_CHUNK_SECONDS_CPU`` on the CPU).
    Inputs up to this length are separated in one pass.
    """
    from sepkit.profiling import peak_activation_bytes

    device = next(model.parameters()).device
    # On the CPU the probe is as long as the chunk the cap gives: the per-shape state the
    # probe leaves (oneDNN primitives with their reordered weights, ~20 MiB for
    # Conv-TasNet) is then the chunks' own, not a second copy beside theirs.
    probe_seconds = MAX_AUTO_CHUNK_SECONDS_CPU if device.type == "cpu" else PROBE_SECONDS
    probe = torch.zeros(1, int(probe_seconds * model.sample_rate), device=device)
    probe[0, ::97] = 1e-3  # not all zeros, in case a model special-cases silence
    peak = peak_activation_bytes(model, probe)
    del probe
    # The probe's buffers are freed but may stay in malloc's heap; hand them back, or they
    # add to the resident memory of every chunk that follows.
    release_freed_memory()
    per_second = max(peak, 1) / probe_seconds
    budget = MEMORY_BUDGET_FRACTION * _available_memory(device) / max(1, batch_chunks)
    ceiling = MAX_AUTO_CHUNK_SECONDS_CPU if device.type == "cpu" else MAX_AUTO_CHUNK_SECONDS
    return float(min(ceiling, max(MIN_AUTO_CHUNK_SECONDS, budget / per_second)))


@dataclass
class OutputOptions:
    """How :func:`separate_file` writes its outputs.

    ``normalize``: ``none`` (as the model gives them), ``peak`` (each source scaled to a
    peak of ``NORMALIZED_PEAK`` unless silent), ``mixture-loudness`` (each source scaled
    so that its RMS equals the mixture's, unless silent). ``stream``: separate with
    :class:`sepkit.streaming.StreamingSeparator` (causal models; no chunks).
    """

    subtype: str | None = "FLOAT"
    normalize: str = "none"
    match_gain: bool = False
    batch_chunks: int = 1
    stream: bool = False


class _SourceWriters:
    """One atomically written output per source, each opened once and filled block by block;
    counts what an integer subtype clips."""

    def __init__(
        self, stack: ExitStack, targets: list[Path], rate: int, subtype: str | None, scratch: bool = False
    ) -> None:
        self.targets = targets
        self.files = []
        for target in targets:
            # Scratch files (the first pass of --normalize) are written in place as float wav.
            file_format = "WAV" if scratch else target.suffix.lstrip(".").upper()
            self.subtype = subtype or sf.default_subtype(file_format)
            tmp = target if scratch else stack.enter_context(atomic_output(target))
            self.files.append(stack.enter_context(open_audio_writer(tmp, rate, 1, self.subtype, file_format)))
        self.clipped = [0] * len(targets)

    def write(self, sources: np.ndarray) -> None:
        """Append ``[n_src, time]``."""
        for i, (handle, source) in enumerate(zip(self.files, sources)):
            source = source.astype(np.float32)
            self.clipped[i] += clipped_samples(source, self.subtype)
            handle.write(source)

    def warn_clipping(self) -> None:
        for target, clipped in zip(self.targets, self.clipped):
            if clipped:
                warnings.warn(clip_warning(target, clipped, self.subtype), AudioWarning, stacklevel=3)


def separate_file(
    model: torch.nn.Module,
    path: Path,
    targets: list[Path],
    channel_policy: str = "mix",
    chunk_seconds: float | None = None,
    subtype: str | None = "FLOAT",
    options: OutputOptions | None = None,
) -> None:
    """Separate one audio file into ``targets`` (one per source, in order; format from
    their suffix) at the file's own sample rate, in bounded memory: the file is read,
    resampled (:class:`sepkit.resample.StreamingResampler`), separated in chunks
    (:class:`ChunkStitcher`; with ``options.stream``, causally by
    :class:`sepkit.streaming.StreamingSeparator`) and written block by block. ``chunk_seconds=None`` chunks
    files longer than :func:`auto_chunk_seconds`. Nothing is written unless every
    source is finite. ``options`` (normalisation, gain match, batching, subtype)
    supersedes ``subtype``, which is kept for callers of the earlier signature.

    Raises:
        AudioError: unreadable, empty, too-short or non-finite input, naming the file.
        SeparationError: the model's output holds NaN or infinity.
    """
    options = options or OutputOptions(subtype=subtype)
    frames, rate, blocks = read_audio_blocks(path, BLOCK_SECONDS, channel_policy)
    model_rate = int(model.sample_rate)
    model_frames = -(-frames * model_rate // rate)
    if model_frames < max(MIN_SECONDS * model_rate, 1):
        raise AudioError(
            f"{path}: too short to separate ({frames} samples at {rate} Hz; need at least {MIN_SECONDS * 1000:.0f} ms)"
        )
    if options.stream:
        stitcher = LatencyTrimmed(StreamingSeparator(model))
    else:
        if chunk_seconds is None:
            chunk_seconds = auto_chunk_seconds(model, options.batch_chunks)
        size = int(chunk_seconds * model_rate)
        if model_frames <= size:
            size = None
        stitcher = ChunkStitcher(
            model,
            size,
            int(size * CHUNK_OVERLAP) if size else 0,
            match_gain=options.match_gain,
            batch_chunks=options.batch_chunks,
        )
    to_model = StreamingResampler(rate, model_rate, channels=1)
    to_file = StreamingResampler(model_rate, rate, channels=model.n_src)
    n_src = int(model.n_src)
    # Running statistics for --normalize: peak and sum of squares per source, and the mixture's.
    peaks = np.zeros(n_src)
    source_energy = np.zeros(n_src)
    mixture_energy = 0.0
    read = written = 0

    def at_file_rate(estimate: torch.Tensor) -> np.ndarray:
        """Check ``[n_src, k]`` model-rate sources and resample what is ready to the file's rate."""
        if not bool(torch.isfinite(estimate).all()):
            raise SeparationError(f"{path}: the model output holds NaN or infinity; nothing written for this file")
        return to_file.push(estimate.cpu().double().numpy())

    def emit(sources: np.ndarray) -> None:
        """Write ``[n_src, k]`` file-rate sources, cut to the input's length, and update the statistics."""
        nonlocal peaks, source_energy, written
        sources = sources[:, : max(0, read - written)]
        peaks = np.maximum(peaks, np.abs(sources).max(axis=1, initial=0.0))
        source_energy += np.square(sources).sum(axis=1)
        writers.write(sources)
        written += sources.shape[1]

    with ExitStack() as stack:
        if options.normalize == "none":
            writers = _SourceWriters(stack, targets, rate, options.subtype)
        else:  # a first pass at full precision, rescaled into the targets once the statistics are known
            raw = [Path(stack.enter_context(_scratch_file(target))) for target in targets]
            writers = _SourceWriters(stack, raw, rate, "FLOAT", scratch=True)
        for block in blocks:
            require_finite(block, path, what="input audio")
            read += len(block)
            mixture_energy += float(np.square(block, dtype=np.float64).sum())
            emit(at_file_rate(stitcher.push(torch.from_numpy(to_model.push(block)[0]).float())))
        emit(at_file_rate(stitcher.push(torch.from_numpy(to_model.finish()[0]).float())))
        emit(at_file_rate(stitcher.finish()))
        emit(to_file.finish())
        if options.normalize == "none":
            writers.warn_clipping()
            return
        for handle in writers.files:
            handle.close()
        if options.normalize == "peak":
            scales = np.where(peaks > 0, NORMALIZED_PEAK / np.where(peaks > 0, peaks, 1.0), 1.0)
        else:
            mixture_rms = math.sqrt(mixture_energy / max(read, 1))
            source_rms = np.sqrt(source_energy / max(written, 1))
            scales = np.where(source_rms > 0, mixture_rms / np.where(source_rms > 0, source_rms, 1.0), 1.0)
        with ExitStack() as final_stack:
            final = _SourceWriters(final_stack, targets, rate, options.subtype)
            readers = [final_stack.enter_context(sf.SoundFile(name)) for name in raw]
            block_frames = max(1, int(BLOCK_SECONDS * rate))
            while True:
                parts = [reader.read(block_frames, dtype="float64") for reader in readers]
                if len(parts[0]) == 0:
                    break
                final.write(np.stack(parts) * scales[:, None])
            final.warn_clipping()


@contextmanager
def _scratch_file(beside: Path) -> Iterator[str]:
    """A temporary file beside ``beside`` (named like sepkit's temp files, so a killed run's
    leftover is cleaned up by the next), removed on exit."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=beside.parent)
    os.close(fd)
    try:
        yield name
    finally:
        if os.path.exists(name):
            os.unlink(name)


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


def plan_jobs(inputs: list[str], out_dir: Path, n_src: int, extension: str = "wav") -> list[Job]:
    """Expand the command line's files and folders into jobs with output paths.

    A file found in folder ``F`` given on the command line at ``F/sub/x.flac`` writes
    ``<out_dir>/sub/x_s1.wav``, ... (``extension``: the output format's suffix); a file
    given directly writes into ``out_dir``.
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
        job.targets = [job.out_folder / f"{stem}_s{i + 1}.{extension}" for i in range(n_src)]
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


def _usage_error(message: str) -> int:
    print(f"sepkit separate: error: {message}", file=sys.stderr)
    return 2


def _option_errors(args: argparse.Namespace) -> str | None:
    """The first invalid option value, as a message; None if all are usable."""
    if args.chunk_seconds is not None and not (math.isfinite(args.chunk_seconds) and args.chunk_seconds > 0):
        return f"--chunk-seconds must be a positive number of seconds, got {args.chunk_seconds}"
    if args.batch_chunks < 1:
        return f"--batch-chunks must be at least 1, got {args.batch_chunks}"
    file_format = args.format.upper()
    if file_format not in sf.available_formats():
        return f"--format {args.format}: this soundfile/libsndfile build cannot write it"
    if args.subtype is not None and not sf.check_format(file_format, args.subtype):
        subtypes = ", ".join(sf.available_subtypes(file_format))
        return f"--subtype {args.subtype} cannot be written to {args.format}; choose one of {subtypes}"
    if args.subtype is None and not sf.check_format(file_format, sf.default_subtype(file_format)):
        return f"--format {args.format}: this soundfile/libsndfile build cannot write it"
    if args.device == "auto":
        return _folder_error(Path(args.out_dir))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device {args.device!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)"
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        return f"--device {args.device}: no such CUDA device on this machine"
    return _folder_error(Path(args.out_dir))


def _folder_error(out_dir: Path) -> str | None:
    """Why ``out_dir`` cannot take outputs, or None."""
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
    options = OutputOptions(
        subtype=args.subtype,
        normalize=args.normalize,
        match_gain=args.match_gain,
        batch_chunks=args.batch_chunks,
        stream=args.stream,
    )
    separate_file(model, job.source, job.targets, args.channels, args.chunk_seconds, options=options)
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
    parser.add_argument(
        "--device", default="cpu", help="torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--channels",
        choices=["mix", "first"],
        default="mix",
        help="multi-channel input: average channels or keep the first",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=None,
        help="separate in overlapping chunks of this length (default: automatic, chunks as long as "
        f"{MEMORY_BUDGET_FRACTION * 100:.0f}%% of the device's free memory holds at the model's activation memory "
        f"per second, measured on a {PROBE_SECONDS:.0f} s probe ({MAX_AUTO_CHUNK_SECONDS_CPU:.0f} s on the CPU), "
        f"clamped to {MIN_AUTO_CHUNK_SECONDS:.0f}.."
        f"{MAX_AUTO_CHUNK_SECONDS:.0f} s ({MAX_AUTO_CHUNK_SECONDS_CPU:.0f} s on the CPU); shorter files are separated "
        "in one pass)",
    )
    parser.add_argument(
        "--match-gain",
        action="store_true",
        help="scale each chunk's sources by one factor so their sum has the chunk mixture's energy",
    )
    parser.add_argument(
        "--batch-chunks", type=int, default=1, help="chunks separated per model call (faster on a GPU; same output)"
    )
    parser.add_argument(
        "--normalize",
        choices=NORMALIZE_CHOICES,
        default="none",
        help=f"output level: none (as the model gives it); peak (each output scaled to a peak of {NORMALIZED_PEAK} "
        "unless silent); mixture-loudness (each output scaled so its RMS equals the mixture's, unless silent)",
    )
    parser.add_argument(
        "--format", choices=OUTPUT_FORMATS, default="wav", help="output file format (also the outputs' suffix)"
    )
    parser.add_argument(
        "--subtype",
        default=None,
        help="soundfile subtype of the outputs (default: FLOAT for wav, which keeps peaks > 1; else the format's default)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="separate causally, block by block, with a fixed latency of encoder window - 1 samples "
        "(sepkit.streaming.StreamingSeparator; causal Conv-TasNet or unidirectional DPRNN with cLN only; "
        "the output equals the offline model's, no chunks)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo files even if their outputs are up to date")
    args = parser.parse_args(argv)
    if args.subtype is not None:
        args.subtype = args.subtype.upper()
    elif args.format == "wav":
        args.subtype = "FLOAT"

    from rich.progress import Progress

    from sepkit.checkpoint import CheckpointError, load_model
    from sepkit.hub import resolve_model_source

    problem = _option_errors(args)
    if problem:
        return _usage_error(problem)
    unmap_large_buffers()  # before any tensor: resident memory then follows the live chunk
    try:
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(args.checkpoint, map_location=args.device)
        release_freed_memory()  # the file's bytes and any converted copy of the weights are freed
    except CheckpointError as err:
        return _usage_error(str(err))
    if args.stream:
        if args.chunk_seconds is not None or args.match_gain or args.batch_chunks != 1:
            return _usage_error(
                "--stream separates without chunks: --chunk-seconds, --match-gain and --batch-chunks do not apply"
            )
        try:
            check_streamable(model)
        except StreamingError as err:
            return _usage_error(f"--stream: {err}")
    if args.chunk_seconds is not None and int(args.chunk_seconds * model.sample_rate * CHUNK_OVERLAP) < 1:
        return _usage_error(
            f"--chunk-seconds {args.chunk_seconds} is shorter than a few samples at {model.sample_rate} Hz"
        )
    out_dir = Path(args.out_dir)
    jobs = plan_jobs(args.inputs, out_dir, model.n_src, extension=args.format)
    if not jobs:
        print(f"sepkit separate: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    for folder in sorted({job.out_folder for job in jobs}):
        remove_stale_temp_files(folder)
    # Everything that changes the outputs of one input: its identity and content stamp
    # (added per file), the weights and the options.
    settings = {
        "checkpoint_sha256": sha256_model(resolve_model_source(args.checkpoint)),  # an hf:// id: its model file
        "channels": args.channels,
        "chunk_seconds": args.chunk_seconds,
        "subtype": args.subtype,
        "format": args.format,
        "normalize": args.normalize,
        "match_gain": args.match_gain,
        # Only when on, so the manifests of earlier runs still match.
        **({"stream": True} if args.stream else {}),
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
