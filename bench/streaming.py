"""Streaming separation benchmark: latency and real-time factor per block size.

For each model (random weights; the numbers do not depend on them) and block size, a
:class:`sepkit.streaming.StreamingSeparator` takes ``--seconds`` of noise in blocks of
that many milliseconds. Reported per row:

- ``model_latency_samples`` / ``_ms``: the fixed latency ``D = L - 1`` of the stream
  (encoder window ``L``), the algorithmic delay of the model itself;
- ``algorithmic_latency_ms``: ``N - 1 + D`` samples for blocks of ``N``, the longest
  an input sample waits for its output when compute takes no time (the block fills
  first);
- ``rtf_cpu``: CPU seconds of this process per second of audio with ``--threads``
  intra-op threads (CPU rather than wall time because the machine is shared; with one
  thread it is the time on one otherwise idle core); ``rtf_wall`` beside it; a real-time
  stream needs RTF < 1, and with it each block is done in ``RTF * N`` samples of time;
- ``max_abs_error_vs_offline``: streamed output against the offline model on the same
  signal, shifted by ``D`` (a check that the benchmarked path is the exact one).

The offline forward's RTF on the whole signal is recorded per model for comparison, as
is the machine's load average at start and end (other jobs share this machine).

    PYTHONPATH=. python bench/streaming.py                  # writes bench/results/streaming.json
    PYTHONPATH=. python bench/streaming.py --blocks-ms 10 100 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from sepkit.fileio import write_text_atomic
from sepkit.models import build_model
from sepkit.streaming import StreamingSeparator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RATE = 8000

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # The paper's causal Conv-TasNet (Luo & Mesgarani 2019, Table II, causal row): N=512,
    # L=16, B=128, H=512, Sc=128, P=3, X=8, R=3, cLN.
    "conv_tasnet_causal_paper": ("conv_tasnet", dict(causal=True, norm="cLN")),
    # A small causal DPRNN: the widely used ks16 geometry (N=64, L=16, stride 8, chunk
    # 100, hop 50, 6 blocks, LSTM 128) with unidirectional intra and inter RNNs.
    "dprnn_causal_ks16": (
        "dprnn",
        dict(
            n_filters=64,
            kernel_size=16,
            stride=8,
            bottleneck=64,
            hidden_size=128,
            n_blocks=6,
            chunk_size=100,
            hop=50,
            norm="cLN",
            bidirectional=False,
            bidirectional_intra=False,
        ),
    ),
}


def measure(model: torch.nn.Module, signal: torch.Tensor, block: int, reference: torch.Tensor) -> dict[str, Any]:
    separator = StreamingSeparator(model)
    outputs = []
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, signal.shape[-1], block):
        outputs.append(separator.push(signal[start : start + block]))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    outputs.append(separator.flush())
    streamed = torch.cat(outputs, dim=-1)[:, separator.latency :]
    seconds = signal.shape[-1] / RATE
    latency = separator.latency
    return {
        "block_samples": block,
        "block_ms": 1000 * block / RATE,
        "model_latency_samples": latency,
        "model_latency_ms": 1000 * latency / RATE,
        "algorithmic_latency_ms": 1000 * (block - 1 + latency) / RATE,
        "rtf_cpu": cpu / seconds,
        "rtf_wall": wall / seconds,
        "pushes": -(-signal.shape[-1] // block),
        "max_abs_error_vs_offline": float((streamed - reference).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--blocks-ms", nargs="+", type=float, default=[1, 10, 32, 100, 1000])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio streamed per block size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "streaming.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    signal = 0.1 * torch.randn(int(args.seconds * RATE), generator=torch.Generator().manual_seed(0))
    results: dict[str, Any] = {}
    for name in args.models:
        registered, config = MODELS[name]
        torch.manual_seed(0)
        model = build_model(registered, **config).eval()
        with torch.no_grad():
            cpu = time.process_time()
            reference = model(signal[None])[0]
            offline_cpu = time.process_time() - cpu
        rows = [measure(model, signal, max(1, round(ms * RATE / 1000)), reference) for ms in args.blocks_ms]
        results[name] = {
            "model": registered,
            "config": config,
            "parameters": sum(p.numel() for p in model.parameters()),
            "offline_rtf_cpu": offline_cpu / args.seconds,
            "blocks": rows,
        }
        print(f"\n{name}: offline RTF {offline_cpu / args.seconds:.3f} (CPU, {args.threads} thread(s))")
        print("| block ms | model latency ms | algorithmic latency ms | RTF (CPU) | RTF (wall) | max err |")
        print("|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['block_ms']:g} | {row['model_latency_ms']:.3f} | {row['algorithmic_latency_ms']:.3f} "
                f"| {row['rtf_cpu']:.3f} | {row['rtf_wall']:.3f} | {row['max_abs_error_vs_offline']:.1e} |"
            )
    report = {
        "command": "PYTHONPATH=. python bench/streaming.py "
        + " ".join(
            f"--{key.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for key, v in vars(args).items()
            if key != "out"
        ),
        "sample_rate": RATE,
        "seconds": args.seconds,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "note": "shared machine, loaded by other jobs while this ran (see load averages); RTF is CPU time of "
        "this process per audio second, so it reflects the work, but cache and memory contention from the "
        "other jobs still slow it. Latency figures are exact and do not depend on the machine.",
        "models": results,
    }
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
