"""Data-preparation throughput: mixtures per second written to disk and rendered on
the fly (wsj0-2mix recipe: 2 speakers, 8 kHz, min, ~4 s mixtures on average), with 1
and 2 workers, against the time of one Conv-TasNet training step on this machine.

The corpus is fabricated (16 kHz int16 utterances of U(3, 6) s, so the shorter of two
is 4 s on average). Run: ``PYTHONPATH=. python bench/data.py [--mixtures 120]``.
Writes ``bench/results/data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import wsj0mix  # noqa: E402
from data_prep.common import execute  # noqa: E402
from sepkit.data.mixtures import MixtureSpec, render  # noqa: E402
from sepkit.losses import pit_si_sdr_loss  # noqa: E402
from sepkit.models.registry import build_model  # noqa: E402


class _Rows(Dataset):
    """Renders table rows on the fly: ``(mixture [time], sources [2, time])``."""

    def __init__(self, specs: list[MixtureSpec]) -> None:
        self.specs = specs

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int):
        mix, src = render(self.specs[index])
        return torch.from_numpy(mix), torch.from_numpy(src)


def fabricate(root: Path, n_mixtures: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    wsj0, lists = root / "wsj0_root", root / "lists"
    utts = []
    for s in range(20):
        for u in range(4):
            spk = f"{s:03d}"
            rel = f"wsj0/si_tr_s/{spk}/{spk}o01{u}a.wav"
            path = wsj0 / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            n = int(rng.uniform(3.0, 6.0) * 16000)
            x = rng.standard_normal(n) * np.abs(np.sin(np.arange(n) / 1600.0))
            sf.write(path, np.round(0.3 * x / np.abs(x).max() * 32767).astype(np.int16), 16000, subtype="PCM_16")
            utts.append(rel)
    lists.mkdir()
    lines = []
    for _ in range(n_mixtures):
        a, b = rng.choice(len(utts), size=2, replace=False)
        snr = rng.uniform(0, 2.5)
        lines.append(f"{utts[a]} {snr:.5g} {utts[b]} {-snr:.5g} ")
    for split in ("tr", "cv", "tt"):
        (lists / f"mix_2_spk_{split}.txt").write_text("\n".join(lines) + "\n")
    (lists / "activlev").mkdir()
    (lists / "activlev" / "activlev_si_tr_s.txt").write_text("\n".join(f"{Path(u).stem} 0.01" for u in utts) + "\n")
    return wsj0, lists


def time_training_step(batch: int, seconds: float, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("conv_tasnet", n_src=2, sample_rate=8000)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mix = torch.randn(batch, int(seconds * 8000))
    targets = torch.randn(batch, 2, int(seconds * 8000))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss, _ = pit_si_sdr_loss(model(mix), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up allocators
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mixtures", type=int, default=120)
    # batch 4 x 4 s of the paper-size model needs ~18 GB of activations on CPU; one
    # 4 s mixture per step gives the per-mixture cost without exhausting a shared machine
    parser.add_argument("--batch", type=int, default=1, help="Conv-TasNet batch size (4 s segments)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    args = parser.parse_args()
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "load_average_at_start": os.getloadavg()[0],  # the machine is shared: figures are noisy
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wsj0, lists = fabricate(root, args.mixtures)
        specs = None
        for jobs in (1, 2):
            out = root / f"out{jobs}"
            plans = wsj0mix.build_plans(wsj0, lists, out, [2], [8000], ["min"], ["tr"])
            specs = plans[0].specs
            start = time.perf_counter()
            execute(plans, write=True, jobs=jobs, progress=False)
            elapsed = time.perf_counter() - start
            results[f"write_jobs{jobs}_mix_per_s"] = len(specs) / elapsed
            print(f"write, {jobs} job(s): {len(specs) / elapsed:.1f} mixtures/s", flush=True)
        assert specs is not None
        results["mean_mixture_seconds"] = float(np.mean([s.length for s in specs]) / 8000)
        for workers in (0, 1, 2):
            loader = DataLoader(_Rows(specs), batch_size=1, num_workers=workers)
            start = time.perf_counter()
            for _ in loader:
                pass
            elapsed = time.perf_counter() - start
            results[f"on_the_fly_workers{workers}_mix_per_s"] = len(specs) / elapsed
            print(f"on the fly, {workers} worker(s): {len(specs) / elapsed:.1f} mixtures/s", flush=True)
    step = time_training_step(args.batch, 4.0, args.steps)
    results["conv_tasnet_step_s"] = step
    results["conv_tasnet_batch"] = args.batch
    results["training_consumes_mix_per_s"] = args.batch / step
    results["on_the_fly_headroom_1_worker"] = (
        results["on_the_fly_workers1_mix_per_s"] / results["training_consumes_mix_per_s"]
    )
    print(f"{'measurement':44s} {'value':>10s}")
    for key, value in results.items():
        print(f"{key:44s} {value:>10.3f}" if isinstance(value, float) else f"{key:44s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
