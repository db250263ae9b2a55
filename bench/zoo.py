"""Model zoo benchmark: every registered separator at its paper configuration.

Per model (each in a fresh subprocess, so memory peaks do not mix): parameters; MACs
for one input of ``--seconds`` at the model's sample rate (matmul/conv/attention MACs
from ``torch.utils.flop_counter.FlopCounterMode`` as FLOPs/2, plus the recurrent
matmuls counted analytically, since the counter does not see ``aten::lstm``); peak
memory of a forward pass and of a forward+backward pass (rise of the process's peak
resident set size over the model-loaded baseline); forward time (no grad) and
forward+backward time (median of ``--repeats`` runs after one warm-up) on this
machine's CPU with ``--threads`` threads.

With ``--train`` it also trains each ``recipes/synthetic/<model>.yaml`` for a fixed
budget (``--train-minutes`` of wall time) and reports the test-set SI-SDRi.

Prints a Markdown table and writes ``bench/results/zoo.json`` and ``zoo.md`` atomically.

    PYTHONPATH=. python bench/zoo.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Extra rows beside each registered model's defaults: named paper variants.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sudormrf_0.5x": ("sudormrf", {"n_blocks": 8}),
    "sudormrf_0.25x": ("sudormrf", {"n_blocks": 4}),
}

RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_macs(model: nn.Module, wav: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass: FlopCounterMode (FLOPs/2) for
    matmuls, convolutions and attention, plus recurrent layers counted from their shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    rnn_macs = 0

    def rnn_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        nonlocal rnn_macs
        x = inputs[0]
        batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
        directions = 2 if module.bidirectional else 1
        gates = RNN_GATES[type(module)] * module.hidden_size
        for layer in range(module.num_layers):
            in_size = module.input_size if layer == 0 else module.hidden_size * directions
            rnn_macs += directions * batch * steps * gates * (in_size + module.hidden_size)

    handles = [m.register_forward_hook(rnn_hook) for m in model.modules() if type(m) in RNN_GATES]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(wav)
    finally:
        for handle in handles:
            handle.remove()
    return int(counter.get_total_flops() // 2 + rnn_macs)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, config: dict[str, Any], seconds: float, repeats: int, threads: int) -> dict[str, Any]:
    """All per-model figures; run in a fresh process (see ``main``)."""
    from sepkit.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name, **config)
    wav = torch.randn(1, int(seconds * model.sample_rate))
    baseline = _peak_rss_mib()

    model.eval()
    with torch.no_grad():
        model(wav)
    forward_peak = _peak_rss_mib() - baseline
    model.train()
    model(wav).square().mean().backward()
    train_peak = _peak_rss_mib() - baseline
    model.zero_grad(set_to_none=True)

    model.eval()
    macs = count_macs(model, wav)

    def forward() -> None:
        with torch.no_grad():
            model(wav)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(wav).square().mean().backward()

    forward_s = _median_time(forward, repeats)
    model.train()
    train_s = _median_time(forward_backward, repeats)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": macs / 1e9,
        "forward_peak_mib": forward_peak,
        "train_peak_mib": train_peak,
        "forward_s": forward_s,
        "forward_backward_s": train_s,
    }


def _run_worker(name: str, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--worker", name, json.dumps(config),
        "--seconds", str(args.seconds), "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench/zoo.py: measuring {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_recipe(recipe: Path, minutes: float, workdir: Path) -> dict[str, Any]:
    """Train a synthetic recipe for ``minutes`` of wall time, then test; returns the
    test SI-SDRi and how far training got."""
    run_dir = workdir / recipe.stem
    command = [
        sys.executable, "-m", "sepkit.cli", "train", "--config", str(recipe),
        "--trainer.max_time", f"00:00:{int(minutes):02d}:{int(round(minutes % 1 * 60)):02d}",
        "--trainer.default_root_dir", str(run_dir),
        "--checkpoint.dirpath", str(run_dir / "checkpoints"),
        "--test_after_fit", "true",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench/zoo.py: training {recipe} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    return {"recipe": str(recipe.relative_to(ROOT)), "train_minutes": minutes, "wall_s": time.perf_counter() - start, **metrics}


def _table(rows: list[dict[str, Any]], seconds: float, threads: int) -> str:
    lines = [
        f"Input: {seconds:g} s at 8 kHz, batch 1; CPU, {threads} threads. "
        "MACs: matmul/conv/attention/RNN multiply-accumulates of one forward pass. "
        "Peak: rise of peak resident memory over the loaded model.",
        "",
        "| model | params | GMACs | fwd peak (MiB) | fwd+bwd peak (MiB) | fwd (s) | fwd+bwd (s) | synthetic SI-SDRi (dB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        sisdri = row.get("synthetic_si_sdri")
        lines.append(
            f"| {row['label']} | {row['params']:,} | {row['gmacs']:.2f} | {row['forward_peak_mib']:.0f} | "
            f"{row['train_peak_mib']:.0f} | {row['forward_s']:.3f} | {row['forward_backward_s']:.2f} | "
            f"{'' if sisdri is None else f'{sisdri:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="registered names or variant labels (default: all)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="also train the synthetic recipes")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "zoo.json")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        name, config = args.worker
        print(json.dumps(measure(name, json.loads(config), args.seconds, args.repeats, args.threads)))
        return

    from sepkit.models import list_models

    entries = [(name, name, {}) for name in list_models()]
    entries += [(label, name, config) for label, (name, config) in VARIANTS.items()]
    if args.models:
        entries = [entry for entry in entries if entry[0] in args.models]
    rows = []
    for label, name, config in entries:
        print(f"measuring {label} ...", file=sys.stderr, flush=True)
        rows.append({"label": label, "model": name, "config": config, **_run_worker(name, config, args)})

    if args.train:
        with tempfile.TemporaryDirectory() as workdir:
            for row in rows:
                recipe = ROOT / "recipes" / "synthetic" / f"{row['label'].replace('_', '')}.yaml"
                if row["config"] or not recipe.exists():
                    continue
                print(f"training {recipe.name} for {args.train_minutes} min ...", file=sys.stderr, flush=True)
                result = train_recipe(recipe, args.train_minutes, Path(workdir))
                row["synthetic_si_sdri"] = result.get("test/si_sdri")
                row["synthetic_training"] = result

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads},
        "seconds": args.seconds,
        "repeats": args.repeats,
        "rows": rows,
    }
    table = _table(rows, args.seconds, args.threads)
    _write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    _write_atomic(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
