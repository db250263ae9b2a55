"""WHAMR! (reverberant WHAM!) from WSJ0, WHAM! noise and WHAMR's room parameters.

Inputs: everything WHAM! needs (see :mod:`data_prep.wham`) plus
``reverb_params_{split}.csv`` (columns utterance_id, room_x/y/z, micL_x/y, micR_x/y,
mic_z, s1_x/y/z, s2_x/y/z, T60) from WHAMR's ``whamr_scripts/data`` (``--reverb-params DIR``).

Impulse responses: a shoebox room at 16 kHz, ``max_order = ceil(T60 c / min(room))``,
Sabine's ``a = 24 ln10 V / (c S T60)``, RIRs truncated to ``ceil(T60 fs)`` samples; the
anechoic RIR is the same room with ``max_order = 0`` (direct path, propagation delay
kept). Left microphone only (the official default is mono). Two engines
(``rir_engine``):

* ``pra031`` (default): :mod:`data_prep.image_source`, an exact numpy port of the
  pyroomacoustics 0.3.1 computation WHAMR! pins (``a`` is an amplitude factor,
  reflections scaled by ``1 - a``, sign flip when ``a > 1``, no high-pass). The
  official files are reproduced to float rounding.
* ``pyroomacoustics``: the installed pyroomacoustics (0.4+: energy absorption, a
  10 Hz high-pass, a different fractional delay, 1/d instead of 1/(4 pi d)). Rooms
  resemble the official ones but are not equal; rooms with ``a > 1`` cannot be
  expressed and come out with positive reflections.

``absorption_law``: ``legacy`` (default) keeps WHAMR's reading of ``a`` as an amplitude
factor, as the official data does, so the real T60 (Sabine for the energy absorption
``1 - (1 - a)^2``) is shorter than the ``T60`` column; ``sabine`` treats ``a`` as the
energy absorption so the simulated T60 follows the column (amplitude factor
``sqrt(1 - a)``; refused when ``a >= 1``). The achieved T60 of every reverberant RIR is
measured and compared with the Sabine prediction; see :func:`room_rirs`.

RIRs are computed once per room and cached as ``.npy`` files in
``<out>/rirs/{engine}_{law}/{split}/`` so on-the-fly rendering never re-simulates a
room and RIRs of another engine or law are never mixed in.

Rendering (``whamr_scripts/create_wham_from_scratch.py``), as one table row:

* the 16 kHz source, zero-padded to the noise length, convolved with the RIR, then
  resample_poly to the output rate;
* a per-source gain ``sqrt(sum(dry^2) / sum(anechoic^2))``, where ``dry`` is the whole
  WHAM! source utterance of this rate and mode (not cut to the mixture, also at 16 kHz
  min) and ``anechoic`` the whole anechoic convolution at this rate, applied to both
  reverberant and anechoic versions. Each source is convolved once per utterance for
  these gains and resampled to every rate, as the official script does;
* ``min``: length of the shorter dry source; ``max``: the noise length with the sources
  shifted by the WHAM! offset; unreverberated WHAM! noise as in WHAM!; float output.

Layout: ``<out>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix_clean,mix_single,mix_both,s1,s2}_
{anechoic,reverb}`` plus ``noise``. Tasks (targets are the anechoic sources by default,
Asteroid's convention, i.e. separation with dereverberation): sep_clean_anechoic,
sep_noisy_anechoic, sep_reverb (mix_clean_reverb), sep_noisy_reverb (mix_both_reverb).
With ``reverberant_targets`` the reverberant tasks keep the reverberation: their tables
name the ``s1``/``s2`` reverberant sources (folders ``s{1,2}_reverb``) as targets; the
written folders and the anechoic tasks do not change.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt
from tqdm import tqdm

from data_prep.common import PrepareError, RowCompletion, SplitPlan, require_file
from data_prep.image_source import max_reflection_order, room_response, sabine_absorption
from data_prep.wham import SPLITS, wham_roots, wham_rows
from sepkit.data.mixtures import MixtureSpec, SignalCache, signal_samples

SIM_RATE = 16000
SPEED_OF_SOUND = 343.0
RIR_ENGINES = ("pra031", "pyroomacoustics")
ABSORPTION_LAWS = ("legacy", "sabine")
ANECHOIC_TARGETS = "s1_anechoic s2_anechoic"
REVERBERANT_TARGETS = "s1 s2"
TASKS = {
    "sep_clean_anechoic": ("mix_clean_anechoic", ANECHOIC_TARGETS),
    "sep_noisy_anechoic": ("mix_both_anechoic", ANECHOIC_TARGETS),
    "sep_reverb": ("mix_clean", ANECHOIC_TARGETS),
    "sep_noisy_reverb": ("mix_both", ANECHOIC_TARGETS),
}
# tasks whose input is reverberant: --reverberant-targets turns their targets into the reverberant sources
REVERBERANT_INPUT_TASKS = ("sep_reverb", "sep_noisy_reverb")
# renderer output name -> official folder
FOLDERS = {
    "s1": "s1_reverb",
    "s2": "s2_reverb",
    "mix_clean": "mix_clean_reverb",
    "mix_both": "mix_both_reverb",
    "mix_single": "mix_single_reverb",
    "s1_anechoic": "s1_anechoic",
    "s2_anechoic": "s2_anechoic",
    "mix_clean_anechoic": "mix_clean_anechoic",
    "mix_both_anechoic": "mix_both_anechoic",
    "mix_single_anechoic": "mix_single_anechoic",
    "noise": "noise",
}
# a log file gets one plain progress line per this many seconds (a terminal gets a live bar)
LOG_PROGRESS_SECONDS = 30.0

Item = TypeVar("Item")


def _progress(items: Sequence[Item], desc: str, unit: str, enabled: bool) -> Iterable[Item]:
    """``items`` with a progress display on stderr: a tqdm bar on a terminal, and on a
    redirected stderr (a log file) whole lines ``desc: done/total (pct) elapsed`` at most
    every :data:`LOG_PROGRESS_SECONDS` and at the end, instead of carriage-return updates."""
    if not enabled:
        return items
    if sys.stderr.isatty():
        return tqdm(items, desc=desc, unit=unit)
    return _log_lines(items, desc, unit)


def _log_lines(items: Sequence[Item], desc: str, unit: str) -> Iterator[Item]:
    total = len(items)
    begin = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if done == total or now - last >= LOG_PROGRESS_SECONDS:
            last = now
            print(f"{desc}: {done}/{total} {unit}s ({100 * done / total:.0f}%) {now - begin:.0f} s", file=sys.stderr)


def read_reverb_params(path: Path) -> dict[str, dict[str, float]]:
    require_file(path, "WHAMR! room parameter file")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    params = {}
    for line, row in enumerate(rows, start=2):
        try:
            values = {k: float(v) for k, v in row.items() if k != "utterance_id"}
            name = Path(row["utterance_id"]).stem
        except (KeyError, TypeError, ValueError) as err:
            raise PrepareError(f"{path}:{line}: malformed room parameters ({err!r})") from err
        if not all(math.isfinite(v) for v in values.values()):
            raise PrepareError(f"{path}:{line}: room parameters must be finite numbers")
        params[name] = values
    return params


def energy_absorption(room: list[float], t60: float, law: str) -> float:
    """Wall energy absorption for the target ``t60`` (see the module note on ``law``)."""
    sabine = sabine_absorption(room, t60)
    if law == "legacy":
        return 1.0 - (1.0 - sabine) ** 2
    if law == "sabine":
        return sabine
    raise ValueError(f"absorption law must be one of {ABSORPTION_LAWS}, got {law!r}")


def sabine_t60(room: list[float], absorption: float) -> float:
    """Sabine's reverberation time for the wall energy ``absorption``."""
    volume = room[0] * room[1] * room[2]
    surface = 2 * (room[0] * room[1] + room[0] * room[2] + room[1] * room[2])
    return 24 * math.log(10.0) * volume / (SPEED_OF_SOUND * surface * absorption)


def decay_t60(rir: np.ndarray, rate: int) -> float:
    """Reverberation time of ``rir`` ``[time]``: Schroeder's backward-integrated energy decay
    of the response high-passed at 10 Hz (2nd-order Butterworth), the time from -5 to
    -25 dB times 3 (T20, as ``-60 dB`` is rarely reached in the kept length); NaN when the
    decay never reaches -25 dB. The high-pass keeps the DC build-up of the unfiltered 0.3.1
    responses, which no listener hears as reverberation, from stretching the decay."""
    highpass = butter(2, 10.0, btype="highpass", fs=rate, output="sos")
    energy = np.cumsum(sosfilt(highpass, rir)[::-1] ** 2)[::-1]
    if not energy[0] > 0:
        return math.nan
    decay_db = 10 * np.log10(np.maximum(energy / energy[0], 1e-300))
    below5 = np.flatnonzero(decay_db <= -5.0)
    below25 = np.flatnonzero(decay_db <= -25.0)
    if len(below25) == 0:
        return math.nan
    return 3.0 * (int(below25[0]) - int(below5[0])) / rate


def _import_pyroomacoustics():
    try:
        import pyroomacoustics
    except ImportError as err:
        raise PrepareError(
            "--rir-engine pyroomacoustics needs pyroomacoustics: pip install pyroomacoustics "
            "(the default engine pra031 needs nothing extra)"
        ) from err
    return pyroomacoustics


def room_rirs(params: dict[str, float], law: str = "legacy", engine: str = "pra031") -> dict[str, np.ndarray | float]:
    """Simulate one WHAMR! room (left microphone, both sources).

    Returns:
        ``reverb`` and ``anechoic``: ``[2 sources, rir_len]`` left-microphone RIRs at
        16 kHz, ``rir_len = ceil(T60 fs)`` (shorter responses zero-padded);
        ``t60_measured`` (mean over sources of the reverberant RIRs' decay) and
        ``t60_expected`` (Sabine for the energy absorption in effect).

    Raises:
        ValueError: unknown law or engine, a position outside the room, or (``sabine``
            law) a T60 too short for the room (Sabine absorption of 1 or more).
    """
    room_dims = [params["room_x"], params["room_y"], params["room_z"]]
    t60 = params["T60"]
    rir_len = int(math.ceil(t60 * SIM_RATE))
    mic_left = [params["micL_x"], params["micL_y"], params["mic_z"]]
    sources = [[params[f"s{s}_x"], params[f"s{s}_y"], params[f"s{s}_z"]] for s in (1, 2)]
    if law not in ABSORPTION_LAWS:
        raise ValueError(f"absorption law must be one of {ABSORPTION_LAWS}, got {law!r}")
    if engine == "pra031":
        sabine = sabine_absorption(room_dims, t60)
        if law == "sabine" and sabine >= 1.0:
            raise ValueError(f"T60 {t60} s is too short for a {room_dims} m room (Sabine absorption {sabine:.3f} >= 1)")
        # the port takes 0.3.1's amplitude absorption: WHAMR's Sabine value itself, or the
        # amplitude factor whose energy absorption is Sabine's
        amplitude = sabine if law == "legacy" else 1.0 - math.sqrt(1.0 - sabine)
        order = max_reflection_order(room_dims, t60)
        reverb = [room_response(room_dims, s, mic_left, amplitude, order, SIM_RATE, rir_len) for s in sources]
        anechoic = [room_response(room_dims, s, mic_left, amplitude, 0, SIM_RATE, rir_len) for s in sources]
        measured = [decay_t60(h, SIM_RATE) for h in reverb]
        energy = 1.0 - (1.0 - amplitude) ** 2
    elif engine == "pyroomacoustics":
        reverb, anechoic, measured, energy = _pyroomacoustics_rirs(room_dims, mic_left, sources, t60, law)
    else:
        raise ValueError(f"RIR engine must be one of {RIR_ENGINES}, got {engine!r}")
    return {
        "reverb": np.stack([_fit(np.asarray(h, dtype=np.float64), rir_len) for h in reverb]),
        "anechoic": np.stack([_fit(np.asarray(h, dtype=np.float64), rir_len) for h in anechoic]),
        "t60_measured": float(np.mean(measured)),
        "t60_expected": sabine_t60(room_dims, energy),
    }


def _pyroomacoustics_rirs(
    room_dims: list[float], mic: list[float], sources: list[list[float]], t60: float, law: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], float]:
    """The installed pyroomacoustics' RIRs (untruncated) and Schroeder T60s, and the energy absorption."""
    pra = _import_pyroomacoustics()
    absorption = energy_absorption(room_dims, t60, law)
    max_order = max_reflection_order(room_dims, t60)
    out: dict[str, list[np.ndarray]] = {}
    for kind, order in (("reverb", max_order), ("anechoic", 0)):
        room = pra.ShoeBox(room_dims, fs=SIM_RATE, materials=pra.Material(absorption), max_order=order)
        for position in sources:
            room.add_source(position)
        room.add_microphone_array(pra.MicrophoneArray(np.array([mic]).T, SIM_RATE))
        room.compute_rir()
        out[kind] = [np.asarray(h, dtype=np.float64) for h in room.rir[0]]
    measured = [float(pra.experimental.measure_rt60(h, fs=SIM_RATE)) for h in out["reverb"]]
    return out["reverb"], out["anechoic"], measured, absorption


def _fit(h: np.ndarray, n: int) -> np.ndarray:
    return h[:n] if len(h) >= n else np.concatenate([h, np.zeros(n - len(h))])


def rir_directory(out: Path, split: str, engine: str, law: str) -> Path:
    """Cache folder of one split's RIRs, separate per engine and absorption law."""
    return out / "rirs" / f"{engine}_{law}" / split


def build_plans(
    wsj0: Path,
    wham_noise: Path,
    lists_dir: Path,
    reverb_dir: Path,
    out: Path,
    sample_rates: list[int],
    modes: list[str],
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] = tuple(TASKS),
    absorption_law: str = "legacy",
    jobs: int = 1,
    dry_run: bool = False,
    t60_report: list[tuple[str, float, float, float]] | None = None,
    progress: bool = True,
    rir_engine: str = "pra031",
    reverberant_targets: bool = False,
) -> list[SplitPlan]:
    """WHAMR! plans. Simulates (and caches) the RIRs (skipped in a dry run); the
    energy-matching gains are left to :func:`data_prep.common.execute`, which computes
    them (:func:`energy_matching_gains`) in the pass that writes the rows, from the same
    convolved and resampled signals. ``t60_report`` collects ``(name, T60 column,
    expected, measured)`` per new room. ``reverberant_targets``: the reverberant tasks'
    tables target ``s1 s2`` (reverberant)."""
    if rir_engine not in RIR_ENGINES:
        raise PrepareError(f"RIR engine must be one of {RIR_ENGINES}, got {rir_engine!r}")
    if absorption_law not in ABSORPTION_LAWS:
        raise PrepareError(f"absorption law must be one of {ABSORPTION_LAWS}, got {absorption_law!r}")
    plans = []
    for split in splits:
        params_path = reverb_dir / f"reverb_params_{split}.csv"
        params = read_reverb_params(params_path)
        wham = wham_rows(wsj0, wham_noise, lists_dir, out, split, sample_rates, modes, jobs, dry_run)
        rir_dir = rir_directory(out, split, rir_engine, absorption_law)
        names = [spec.mixture_id for spec in next(iter(wham.values()))]
        absent = [name for name in names if name not in params]
        if absent:
            raise PrepareError(f"{params_path}: no room parameters for {len(absent)} mixture(s), e.g. {absent[0]}")
        if not dry_run:
            rir_dir.mkdir(parents=True, exist_ok=True)
            rooms = _progress(names, f"WHAMR! rooms {split}", "room", progress)
            for name in rooms:
                _cache_room(name, params[name], params_path, rir_dir, absorption_law, rir_engine, t60_report)
        # every rate and mode pads to the 16 kHz noise's length: its header read once per mixture
        noise_frames = {dry.mixture_id: int(sf.info(dry.noise.path).frames) for dry in next(iter(wham.values()))}
        for (rate, mode), dry_rows in wham.items():
            specs = [_reverberant(dry, rir_dir, noise_frames[dry.mixture_id]) for dry in dry_rows]
            base = out / f"wav{rate // 1000}k" / mode
            tables = {}
            for task in tasks:
                mixture, targets = TASKS[task]
                if reverberant_targets and task in REVERBERANT_INPUT_TASKS:
                    targets = REVERBERANT_TARGETS
                tables[base / f"{split}_{task}.csv"] = [replace(s, mixture=mixture, targets=targets) for s in specs]
            plans.append(
                SplitPlan(
                    name=f"WHAMR! {rate // 1000}k {mode} {split}",
                    directory=base / split,
                    specs=specs,
                    folders=dict(FOLDERS),
                    tables=tables,
                    out=out,
                    roots=(*wham_roots(wsj0, wham_noise, out), out / "rirs"),
                    completion=RowCompletion(
                        energy_matching_gains,
                        {dry.mixture_id: dry for dry in dry_rows},
                        "WHAMR! gains",
                    ),
                )
            )
    return plans


def _cache_room(
    name: str,
    room: dict[str, float],
    params_path: Path,
    rir_dir: Path,
    law: str,
    engine: str,
    t60_report: list[tuple[str, float, float, float]] | None,
) -> None:
    """Simulate room ``name`` unless its four RIRs are cached already (in ``rir_dir``, which exists)."""
    paths = {(s, kind): rir_dir / f"{name}_s{s}_{kind}.npy" for s in (1, 2) for kind in ("reverb", "anechoic")}
    if all(p.is_file() for p in paths.values()):
        return
    try:
        rirs = room_rirs(room, law, engine)
    except ValueError as err:
        raise PrepareError(f"{params_path}: room of {name}: {err}") from err
    for kind in ("reverb", "anechoic"):
        if not np.all(np.isfinite(rirs[kind])):
            raise PrepareError(f"{params_path}: room of {name}: the {kind} RIR is not finite")
    for (s, kind), path in paths.items():
        _save_npy(path, rirs[kind][s - 1])
    if t60_report is not None:
        t60_report.append((name, room["T60"], rirs["t60_expected"], rirs["t60_measured"]))


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def _reverberant(dry: MixtureSpec, rir_dir: Path, noise_frames16: int) -> MixtureSpec:
    """The WHAMR! row of one WHAM! row ``dry``: the sources get their room's RIRs, are
    zero-padded to the 16 kHz noise length ``noise_frames16`` and are not quantised; their
    gains are placeholders (1.0) until :func:`energy_matching_gains` completes the row."""
    sources = [
        replace(
            source,
            rir=str(rir_dir / f"{dry.mixture_id}_s{i + 1}_reverb.npy"),
            anechoic_rir=str(rir_dir / f"{dry.mixture_id}_s{i + 1}_anechoic.npy"),
            pad_to=noise_frames16,
            quantize=False,
            post_gain=1.0,
            gain=1.0,
        )
        for i, source in enumerate(dry.sources)
    ]
    return replace(dry, sources=sources)


def energy_matching_gains(row: MixtureSpec, dry: object, cache: SignalCache) -> MixtureSpec:
    """``row`` (from :func:`_reverberant`) with each source's gain
    ``sqrt(sum(dry^2) / sum(anechoic^2))``, as whamr_scripts computes it: ``dry`` the whole
    WHAM! source utterance of this rate and mode (WHAM! row ``dry``, whatever part of it
    the mixture keeps, also at 16 kHz min), ``anechoic`` the whole anechoic convolution
    at this rate. Both come from ``cache``, which the writing of the same rows shares:
    the anechoic signal is the very one the row's anechoic outputs are cut from."""
    assert isinstance(dry, MixtureSpec)
    sources = []
    for i, (wet, dry_source) in enumerate(zip(row.sources, dry.sources, strict=True)):
        frames = cache.info(Path(dry_source.path))[0]
        # the whole dry utterance (stop at its end, placed at 0), not the part inside the mixture
        whole = replace(dry_source, offset=0, start=0, stop=frames)
        dry_signal = signal_samples(whole, replace(dry, sources=[whole], noise=None), cache=cache)
        anechoic = signal_samples(replace(wet, gain=1.0), row, anechoic=True, cache=cache)
        anechoic_energy = float(np.sum(anechoic**2))
        if not anechoic_energy > 0:
            raise PrepareError(f"{wet.path}: its anechoic convolution with {wet.anechoic_rir} is silent or not finite")
        gain = math.sqrt(float(np.sum(dry_signal**2)) / anechoic_energy)
        if not math.isfinite(gain):
            raise PrepareError(f"{wet.path}: WHAMR! gain of {row.mixture_id} s{i + 1} is not finite")
        sources.append(replace(wet, gain=gain))
    return replace(row, sources=sources)
