"""WHAMR! (reverberant WHAM!) from WSJ0, WHAM! noise and WHAMR's room parameters.

Inputs: everything WHAM! needs (see :mod:`data_prep.wham`) plus
``reverb_params_{split}.csv`` (columns utterance_id, room_x/y/z, micL_x/y, micR_x/y,
mic_z, s1_x/y/z, s2_x/y/z, T60) from WHAMR's ``whamr_scripts/data`` (``--reverb-params DIR``).

Impulse responses (needs the optional ``pyroomacoustics``): a shoebox room simulated
at 16 kHz with the image-source method, ``max_order = ceil(T60 c / min(room))``, RIRs
truncated to ``ceil(T60 fs)`` samples; the anechoic RIR is the same room with
``max_order = 0`` (direct path, propagation delay kept). Left microphone only (the
official default is mono). They are computed once and cached as ``.npy`` files in
``<out>/rirs/{split}/`` so on-the-fly rendering never re-simulates a room.

Deviation from the official data: WHAMR! pins pyroomacoustics 0.3.1, whose
``absorption`` argument was an *amplitude* factor (reflections scaled by ``1 - a``);
WHAMR passes Sabine's energy coefficient ``a = 24 ln10 V / (c S T60)`` there. Current
pyroomacoustics (0.4+, used here) takes energy absorption; the default
``absorption_law="legacy"`` converts as pyroomacoustics' own compatibility shim did
(``1 - (1 - a)^2``), reproducing the original rooms, whose real T60 is shorter than
the ``T60`` column. ``"sabine"`` uses ``a`` as energy absorption so the simulated T60
follows the column. The image-source code itself changed after 0.3.1 (fractional
delays, the C engine), so RIRs are close to but not bit-exact with the official ones.
The achieved T60 of every reverberant RIR is measured (Schroeder decay) and compared
with the Sabine prediction for the absorption actually used; see :func:`room_rirs`.

Rendering (``whamr_scripts/create_wham_from_scratch.py``), as one table row:

* the 16 kHz source, zero-padded to the noise length, convolved with the RIR, then
  resample_poly to the output rate;
* a per-source gain ``sqrt(sum(dry^2) / sum(anechoic^2))``, where ``dry`` is the WHAM!
  source of this rate and mode (whole utterance) and ``anechoic`` the whole anechoic
  convolution at this rate, applied to both reverberant and anechoic versions;
* ``min``: length of the shorter dry source; ``max``: the noise length with the sources
  shifted by the WHAM! offset; unreverberated WHAM! noise as in WHAM!; float output.

Layout: ``<out>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix_clean,mix_single,mix_both,s1,s2}_
{anechoic,reverb}`` plus ``noise``. Tasks (targets are the anechoic sources, Asteroid's
convention): sep_clean_anechoic, sep_noisy_anechoic, sep_reverb (mix_clean_reverb),
sep_noisy_reverb (mix_both_reverb).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.common import PrepareError, SplitPlan, require_file
from data_prep.wham import SPLITS, wham_roots, wham_rows
from sepkit.data.mixtures import MixtureSpec, signal_samples

SIM_RATE = 16000
SPEED_OF_SOUND = 343.0
TASKS = {
    "sep_clean_anechoic": ("mix_clean_anechoic", "s1_anechoic s2_anechoic"),
    "sep_noisy_anechoic": ("mix_both_anechoic", "s1_anechoic s2_anechoic"),
    "sep_reverb": ("mix_clean", "s1_anechoic s2_anechoic"),
    "sep_noisy_reverb": ("mix_both", "s1_anechoic s2_anechoic"),
}
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


def read_reverb_params(path: Path) -> dict[str, dict[str, float]]:
    require_file(path, "WHAMR! room parameter file")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    params = {}
    for line, row in enumerate(rows, start=2):
        try:
            params[Path(row["utterance_id"]).stem] = {k: float(v) for k, v in row.items() if k != "utterance_id"}
        except (KeyError, ValueError) as err:
            raise PrepareError(f"{path}:{line}: malformed room parameters ({err!r})") from err
    return params


def energy_absorption(room: list[float], t60: float, law: str) -> float:
    """Wall energy absorption for the target ``t60`` (see the module note on ``law``)."""
    volume = room[0] * room[1] * room[2]
    surface = 2 * (room[0] * room[1] + room[0] * room[2] + room[1] * room[2])
    sabine = 24 * math.log(10.0) * volume / (SPEED_OF_SOUND * surface * t60)
    if law == "legacy":
        return 1.0 - (1.0 - sabine) ** 2
    if law == "sabine":
        return sabine
    raise ValueError(f"absorption law must be 'legacy' or 'sabine', got {law!r}")


def sabine_t60(room: list[float], absorption: float) -> float:
    volume = room[0] * room[1] * room[2]
    surface = 2 * (room[0] * room[1] + room[0] * room[2] + room[1] * room[2])
    return 24 * math.log(10.0) * volume / (SPEED_OF_SOUND * surface * absorption)


def _import_pyroomacoustics():
    try:
        import pyroomacoustics
    except ImportError as err:
        raise PrepareError("WHAMR! needs pyroomacoustics for its room simulation: pip install pyroomacoustics") from err
    return pyroomacoustics


def room_rirs(params: dict[str, float], law: str = "legacy") -> dict[str, np.ndarray | float]:
    """Simulate one WHAMR! room.

    Returns:
        ``reverb`` and ``anechoic``: ``[2 sources, rir_len]`` left-microphone RIRs at
        16 kHz truncated to ``ceil(T60 fs)``; ``t60_measured`` (Schroeder decay of the
        untruncated reverberant RIRs, mean over sources) and ``t60_expected`` (Sabine
        for the energy absorption used).
    """
    pra = _import_pyroomacoustics()
    room_dims = [params["room_x"], params["room_y"], params["room_z"]]
    t60 = params["T60"]
    absorption = energy_absorption(room_dims, t60, law)
    max_order = int(math.ceil(t60 * SPEED_OF_SOUND / min(room_dims)))
    rir_len = int(math.ceil(t60 * SIM_RATE))
    mics = np.array(
        [[params["micL_x"], params["micL_y"], params["mic_z"]], [params["micR_x"], params["micR_y"], params["mic_z"]]]
    ).T
    result: dict[str, np.ndarray | float] = {}
    measured = []
    for kind, order in (("reverb", max_order), ("anechoic", 0)):
        room = pra.ShoeBox(room_dims, fs=SIM_RATE, materials=pra.Material(absorption), max_order=order)
        for s in (1, 2):
            room.add_source([params[f"s{s}_x"], params[f"s{s}_y"], params[f"s{s}_z"]])
        room.add_microphone_array(pra.MicrophoneArray(mics, SIM_RATE))
        room.compute_rir()
        left = room.rir[0]
        if kind == "reverb":
            measured = [float(pra.experimental.measure_rt60(np.asarray(h), fs=SIM_RATE)) for h in left]
        result[kind] = np.stack([_fit(np.asarray(h, dtype=np.float64), rir_len) for h in left])
    result["t60_measured"] = float(np.mean(measured))
    result["t60_expected"] = sabine_t60(room_dims, absorption)
    return result


def _fit(h: np.ndarray, n: int) -> np.ndarray:
    return h[:n] if len(h) >= n else np.concatenate([h, np.zeros(n - len(h))])


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
) -> list[SplitPlan]:
    """WHAMR! plans. Simulates (and caches) the RIRs and computes the energy-matching
    gains, which reads and convolves every source once (skipped in a dry run).
    ``t60_report`` collects ``(name, T60 column, expected, measured)`` per new room."""
    plans = []
    for split in splits:
        params = read_reverb_params(reverb_dir / f"reverb_params_{split}.csv")
        wham = wham_rows(wsj0, wham_noise, lists_dir, out, split, sample_rates, modes, jobs, dry_run)
        rir_dir = out / "rirs" / split
        names = [spec.mixture_id for spec in next(iter(wham.values()))]
        for name in tqdm(names, desc=f"WHAMR! rooms {split}", unit="room", disable=not progress):
            if name not in params:
                raise PrepareError(f"no room parameters for {name} in reverb_params_{split}.csv")
            if dry_run:
                continue
            paths = [rir_dir / f"{name}_s{s}_{kind}.npy" for s in (1, 2) for kind in ("reverb", "anechoic")]
            if all(p.is_file() for p in paths):
                continue
            rirs = room_rirs(params[name], absorption_law)
            rir_dir.mkdir(parents=True, exist_ok=True)
            for s in (1, 2):
                for kind in ("reverb", "anechoic"):
                    _save_npy(rir_dir / f"{name}_s{s}_{kind}.npy", rirs[kind][s - 1])
            if t60_report is not None:
                t60_report.append((name, params[name]["T60"], rirs["t60_expected"], rirs["t60_measured"]))
        for (rate, mode), specs in wham.items():
            label = f"WHAMR! gains {split} {rate // 1000}k {mode}"
            reverb_specs = [_reverberant(s, rir_dir, dry_run) for s in tqdm(specs, desc=label, disable=not progress)]
            base = out / f"wav{rate // 1000}k" / mode
            tables = {}
            for task in tasks:
                mixture, targets = TASKS[task]
                tables[base / f"{split}_{task}.csv"] = [
                    replace(s, mixture=mixture, targets=targets) for s in reverb_specs
                ]
            plans.append(
                SplitPlan(
                    name=f"WHAMR! {rate // 1000}k {mode} {split}",
                    directory=base / split,
                    specs=reverb_specs,
                    folders=dict(FOLDERS),
                    tables=tables,
                    out=out,
                    roots=(*wham_roots(wsj0, wham_noise, out), out / "rirs"),
                )
            )
    return plans


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def _reverberant(spec: MixtureSpec, rir_dir: Path, dry_run: bool) -> MixtureSpec:
    """Turn a WHAM! row into its WHAMR! row (RIRs, energy-matching gains, lengths)."""
    noise = spec.noise
    assert noise is not None
    import soundfile as sf

    noise_frames16 = int(sf.info(noise.path).frames)
    sources = []
    for i, dry in enumerate(spec.sources):
        wet = replace(
            dry,
            rir=str(rir_dir / f"{spec.mixture_id}_s{i + 1}_reverb.npy"),
            anechoic_rir=str(rir_dir / f"{spec.mixture_id}_s{i + 1}_anechoic.npy"),
            pad_to=noise_frames16,
            quantize=False,
            post_gain=1.0,
            gain=1.0,
        )
        if not dry_run:
            dry_signal = signal_samples(dry, replace(spec, sources=[dry], noise=None))
            anechoic = signal_samples(wet, replace(spec, sources=[wet], noise=None), anechoic=True)
            wet = replace(wet, gain=float(np.sqrt(np.sum(dry_signal**2) / np.sum(anechoic**2))))
        sources.append(wet)
    return replace(spec, sources=sources)
