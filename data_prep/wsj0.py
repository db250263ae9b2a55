"""WSJ0 input adapter: find utterances in a converted WAV tree or in the original
SPHERE discs, decode ``.wv1`` files into a WAV cache, refuse ``.wv2``.

The original discs hold NIST SPHERE files with embedded Shorten compression, which
libsndfile (soundfile) cannot read. They are decoded with ``sph2pipe`` when it is on
PATH, else with FFmpeg through PyAV (``pip install av``) when installed; plain
``pcm`` SPHERE files are read directly. Every decode is checked against the header's
``sample_count`` (and ``sample_checksum``: the sum of all samples as unsigned 16-bit,
overflow discarded, when the header has one).

``.wv2`` files are the second, far-field microphone recorded alongside ``.wv1``. Mixing
them in (a ``*.wv*`` glob) silently yields a noisier wsj0-2mix that scores about
1-2 dB lower (asteroid#164), so they are refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.common import PrepareError, worker_pool
from data_prep.progress import Progress
from sepkit.audio import write_audio_atomic

WSJ0_SUFFIXES = (".wav", ".wv1", ".wv2")


def utterance_key(path: str | Path) -> str:
    """``<subset>/<speaker>/<utterance>`` in lowercase, without extension: the part of
    a WSJ0 path that is the same in the disc layout, a merged tree and the mix lists."""
    parts = Path(str(path).lower()).with_suffix("").parts
    if len(parts) < 3:
        raise PrepareError(f"{path}: not a WSJ0 utterance path (expected <subset>/<speaker>/<utterance>)")
    return "/".join(parts[-3:])


def index_wsj0(root: Path) -> dict[str, dict[str, Path]]:
    """Map every utterance key under ``root`` to the files found for it, by suffix."""
    index: dict[str, dict[str, Path]] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            if suffix not in WSJ0_SUFFIXES:
                continue
            path = Path(folder) / name
            try:
                key = utterance_key(path.relative_to(root))
            except PrepareError:
                continue
            index.setdefault(key, {})[suffix] = path
    return index


def read_sphere_header(path: Path) -> tuple[dict[str, str | int | float], int]:
    """Parse a NIST SPHERE header; returns ``(fields, header_bytes)``."""
    with open(path, "rb") as handle:
        head = handle.read(16)
        if not head.startswith(b"NIST_1A"):
            raise PrepareError(f"{path}: not a NIST SPHERE file")
        size = int(head[8:16].strip())
        handle.seek(0)
        text = handle.read(size).decode("ascii", errors="replace")
    fields: dict[str, str | int | float] = {}
    for line in text.splitlines()[2:]:
        if line.strip() == "end_head":
            break
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        key, kind, value = parts
        if kind == "-i":
            fields[key] = int(value)
        elif kind == "-r":
            fields[key] = float(value)
        else:
            fields[key] = value.strip()
    return fields, size


def sphere_checksum(samples: np.ndarray) -> int:
    """Sum of the samples as unsigned 16-bit, overflow discarded."""
    return int(samples.astype(np.int16).view(np.uint16).astype(np.int64).sum() % 65536)


def _decode_pcm(path: Path, fields: dict, header_bytes: int) -> np.ndarray:
    if int(fields.get("sample_n_bytes", 2)) != 2:
        raise PrepareError(f"{path}: only 16-bit SPHERE files are supported")
    order = "<" if str(fields.get("sample_byte_format", "01")) == "01" else ">"
    raw = path.read_bytes()[header_bytes:]
    return np.frombuffer(raw[: len(raw) // 2 * 2], dtype=f"{order}i2").astype(np.int16)


def _decode_sph2pipe(path: Path, executable: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.wav"
        result = subprocess.run([executable, "-f", "wav", str(path), str(out)], capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            raise PrepareError(f"{path}: sph2pipe failed ({result.stderr.strip() or result.returncode})")
        data, _ = sf.read(str(out), dtype="int16", always_2d=True)
    return data[:, 0]


def _decode_pyav(path: Path) -> np.ndarray:
    import av  # optional dependency, imported only when used

    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            array = frame.to_ndarray()
            chunks.append(array.reshape(-1) if array.shape[0] == 1 else array[0])
    if not chunks:
        raise PrepareError(f"{path}: FFmpeg decoded no samples")
    data = np.concatenate(chunks)
    if data.dtype.kind == "f":
        data = np.round(data * 32768.0)
    return data.astype(np.int16)


def _pyav_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def decode_sphere(path: Path) -> tuple[np.ndarray, int]:
    """Decode a 16-bit SPHERE file to ``(int16 samples [time], sample_rate)`` (channel 0),
    checked against the header's sample count and checksum."""
    if path.suffix.lower() == ".wv2":
        raise PrepareError(
            f"{path}: .wv2 is WSJ0's second (far-field) microphone; wsj0-mix uses the .wv1 channel only, "
            "and mixing in .wv2 files lowers SI-SNR by 1-2 dB. Point --wsj0 at a tree with the .wv1 files"
        )
    fields, header_bytes = read_sphere_header(path)
    coding = str(fields.get("sample_coding", "pcm")).lower()
    if coding == "pcm":
        samples = _decode_pcm(path, fields, header_bytes)
    elif coding.startswith("pcm,embedded-shorten"):
        sph2pipe = shutil.which("sph2pipe")
        if sph2pipe:
            samples = _decode_sph2pipe(path, sph2pipe)
        elif _pyav_available():
            samples = _decode_pyav(path)
        else:
            raise PrepareError(
                f"{path}: Shorten-compressed SPHERE, which soundfile cannot read; put sph2pipe on PATH "
                "or `pip install av` (FFmpeg), or give --wsj0 a tree already converted to WAV"
            )
    else:
        raise PrepareError(f"{path}: unsupported SPHERE sample_coding {coding!r}")
    channels = int(fields.get("channel_count", 1))
    if channels > 1 and coding == "pcm":
        samples = samples[::channels]
    expected = fields.get("sample_count")
    if expected is not None and len(samples) != int(expected):
        raise PrepareError(f"{path}: decoded {len(samples)} samples but the SPHERE header says {expected}")
    checksum = fields.get("sample_checksum")
    if checksum is not None and channels == 1 and sphere_checksum(samples) != int(checksum):
        raise PrepareError(f"{path}: decoded samples fail the SPHERE sample_checksum ({checksum})")
    return samples, int(fields.get("sample_rate", 16000))


def _convert(job: tuple[Path, Path]) -> Path:
    source, target = job
    samples, rate = decode_sphere(source)
    write_audio_atomic(target, samples, rate, subtype="PCM_16")
    return target


def resolve_utterances(
    keys: list[str], wsj0_root: Path, cache: Path, jobs: int = 1, dry_run: bool = False, progress: bool = True
) -> dict[str, tuple[Path, int, int]]:
    """Find a readable WAV for every utterance key, decoding ``.wv1`` files into ``cache``.

    Returns:
        key -> ``(wav path, frames, sample_rate)``; in a dry run, ``.wv1`` files are not
        decoded and their frames come from the SPHERE header.

    Raises:
        PrepareError: naming missing utterances, or ``.wv2``-only ones.
    """
    index = index_wsj0(wsj0_root)
    resolved: dict[str, tuple[Path, int, int]] = {}
    conversions: list[tuple[Path, Path]] = []
    missing: list[str] = []
    wv2_only: list[Path] = []
    for key in sorted(set(keys)):
        found = index.get(key, {})
        if ".wav" in found:
            info = sf.info(str(found[".wav"]))
            resolved[key] = (found[".wav"], int(info.frames), int(info.samplerate))
        elif ".wv1" in found:
            target = cache / "wsj0" / f"{key}.wav"
            fields, _ = read_sphere_header(found[".wv1"])
            resolved[key] = (target, int(fields.get("sample_count", 0)), int(fields.get("sample_rate", 16000)))
            if not target.is_file():
                conversions.append((found[".wv1"], target))
        elif ".wv2" in found:
            wv2_only.append(found[".wv2"])
        else:
            missing.append(key)
    if wv2_only:
        decode_sphere(wv2_only[0])  # raises the .wv2 explanation
    if missing:
        shown = ", ".join(missing[:5])
        raise PrepareError(
            f"{len(missing)} WSJ0 utterance(s) not found under {wsj0_root} (as .wav or .wv1), e.g. {shown}; "
            "check that the si_tr_s, si_dt_05 and si_et_05 folders are all present"
        )
    if conversions and not dry_run:
        bar = Progress(len(conversions), "decoding WSJ0 .wv1", progress)
        if jobs <= 1:
            for job in conversions:
                _convert(job)
                bar.update()
        else:
            with worker_pool(jobs) as pool:
                for _ in pool.map(_convert, conversions, chunksize=16):
                    bar.update()
        bar.close()
    return resolved
