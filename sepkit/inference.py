"""Separation of arbitrary audio with a trained model, and the ``sepkit separate`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from sepkit.audio import AudioError, list_audio_files, read_audio, resample, write_audio_atomic
from sepkit.losses import best_permutation, pairwise_si_sdr

# Below this many samples (at the model's rate) there is nothing meaningful to separate.
MIN_SECONDS = 0.01


@torch.no_grad()
def separate(
    model: torch.nn.Module,
    mixture: torch.Tensor,
    chunk_seconds: float | None = None,
    overlap: float = 0.25,
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


def output_paths(out_dir: Path, stem: str, n_src: int, suffix: str = ".wav") -> list[Path]:
    """``<out_dir>/<stem>_s1.wav``, ... one per source."""
    return [out_dir / f"{stem}_s{i + 1}{suffix}" for i in range(n_src)]


def separate_file(
    model: torch.nn.Module,
    path: Path,
    out_dir: Path,
    channel_policy: str = "mix",
    chunk_seconds: float | None = None,
    subtype: str = "FLOAT",
) -> list[Path]:
    """Separate one audio file into ``<stem>_s<i>.wav`` at the file's own sample rate.

    Raises:
        AudioError: unreadable, empty or too-short input, naming the file.
    """
    samples, rate = read_audio(path, channel_policy=channel_policy)
    at_model_rate = resample(samples.astype(np.float64), rate, model.sample_rate)
    if len(at_model_rate) < max(MIN_SECONDS * model.sample_rate, 1):
        raise AudioError(
            f"{path}: too short to separate ({len(samples)} samples at {rate} Hz; "
            f"need at least {MIN_SECONDS * 1000:.0f} ms)"
        )
    estimate = separate(model, torch.from_numpy(at_model_rate).float(), chunk_seconds=chunk_seconds)
    estimate = resample(estimate.cpu().double().numpy(), model.sample_rate, rate)[:, : len(samples)]
    paths = output_paths(out_dir, path.stem, model.n_src)
    for target, source in zip(paths, estimate):
        write_audio_atomic(target, source.astype(np.float32), rate, subtype=subtype)
    return paths


def separate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit separate",
        description="Separate audio files (wav/flac, any sample rate) into one file per source.",
    )
    parser.add_argument("checkpoint", help="sepkit checkpoint (.ckpt from sepkit train, or a model file)")
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
    parser.add_argument("--overwrite", action="store_true", help="redo files whose outputs already exist")
    args = parser.parse_args(argv)

    from rich.progress import Progress

    from sepkit.checkpoint import load_model

    model = load_model(args.checkpoint, map_location=args.device)
    out_dir = Path(args.out_dir)
    files = list_audio_files(args.inputs)
    if not files:
        print(f"sepkit separate: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    failures: list[str] = []
    done = skipped = 0
    with Progress(transient=False) as progress:
        task = progress.add_task("separating", total=len(files))
        for path in files:
            targets = output_paths(out_dir, path.stem, model.n_src)
            if (
                not args.overwrite
                and path.is_file()
                and all(t.is_file() and t.stat().st_mtime >= path.stat().st_mtime for t in targets)
            ):
                skipped += 1
            else:
                try:
                    separate_file(model, path, out_dir, args.channels, args.chunk_seconds, args.subtype)
                    done += 1
                except AudioError as err:
                    failures.append(str(err))
                    progress.console.print(f"[red]error[/red] {err}")
            progress.advance(task)
    print(f"separated {done} file(s), skipped {skipped} already done, {len(failures)} failed -> {out_dir}")
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0
