"""Training-step time of sepkit against Asteroid 0.7.0 on the same architecture.

For each model an Asteroid 0.7.0 model is built (Asteroid's defaults unless stated), its
weights are perturbed, and the sepkit model is made from it with
:func:`sepkit.models.from_asteroid`, so both hold the same architecture and the same
weights; the bench first checks that their outputs agree within 1e-5. One step is what
training does: forward on a ``[2, 32000]`` batch (4 s at 8 kHz), PIT SI-SDR loss
(sepkit's ``pit_si_sdr_loss``; Asteroid's ``PITLossWrapper(pairwise_neg_sisdr)``),
backward, ``Adam.step()``. Both run in this one process with 2 intra-op threads,
alternately (A B B A ... so that neither side always goes first) after warm-up steps,
so that load from other processes hits both sides alike. Reported per model: the
median step time of each side, the ratio of the medians (sepkit / Asteroid) and the
spread of the per-round ratios (each round's sepkit step over the Asteroid step next to
it). The process keeps freed memory for reuse as ``sepkit train`` does
(:func:`sepkit.allocator.keep_freed_memory`), for both sides alike.

Models:

- ``convtasnet``: ``ConvTasNet(n_src=2)``, Asteroid's defaults (512 filters, kernel 16,
  stride 8, bottleneck 128, hidden 512, skip 128, 8 blocks x 3 repeats, gLN).
- ``dprnn``: ``DPRNNTasNet(n_src=2)``, the kernel-16 variant (64 filters, kernel 16,
  stride 8, bottleneck 128, BiLSTM 128, chunk 100, hop 50, 6 blocks).
- ``sudormrf``: ``SuDORMRFNet(n_src=2, n_filters=512, upsampling_depth=5)``, the
  paper's 1.0x model (512 bases, kernel 21, stride 10, bottleneck 128, C_U 512, 16
  blocks, depth 5).

Run: ``PYTHONPATH=. python bench/step_time.py [--models convtasnet dprnn sudormrf]
[--rounds 15]``; writes each model's result into ``bench/results/step_time.json``
(``--output`` to change) as soon as it is measured, keeping the entries of models not
run this time if they come from the same environment (torch, CPU, threads).
Needs ``pip install --no-deps asteroid==0.7.0 asteroid-filterbanks==0.4.0``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepkit.allocator import keep_freed_memory  # noqa: E402
from sepkit.fileio import write_text_atomic  # noqa: E402
from sepkit.losses import pit_si_sdr_loss  # noqa: E402
from sepkit.models import from_asteroid  # noqa: E402

BATCH_SHAPE = (2, 32000)
THREADS = 2
TARGETS = {"convtasnet": 0.7, "dprnn": 0.9, "sudormrf": 0.6}
# Asteroid class and constructor arguments of each benchmarked model.
ASTEROID_MODELS: dict[str, tuple[str, dict]] = {
    "convtasnet": ("ConvTasNet", {}),
    "dprnn": ("DPRNNTasNet", {}),
    "sudormrf": ("SuDORMRFNet", {"n_filters": 512, "upsampling_depth": 5}),
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(asteroid_model, sepkit_model)`` with the same (perturbed) weights."""
    import asteroid.models

    class_name, kwargs = ASTEROID_MODELS[name]
    torch.manual_seed(0)
    reference = getattr(asteroid.models, class_name)(n_src=2, **kwargs)
    # Default inits leave norms at identity; perturb so that the outputs check means something.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return reference, from_asteroid(reference.serialize())


def _max_output_difference(reference: torch.nn.Module, model: torch.nn.Module, mixture: torch.Tensor) -> float:
    reference.eval(), model.eval()
    with torch.no_grad():
        difference = (reference(mixture) - model(mixture)).abs().max().item()
    reference.train(), model.train()
    return difference


def _step_function(model: torch.nn.Module, loss_fn: Callable, mixture: torch.Tensor, sources: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(mixture), sources)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def bench_model(name: str, rounds: int, warmup: int) -> dict:
    from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr

    reference, model = _build_pair(name)
    generator = torch.Generator().manual_seed(2)
    sources = torch.randn(BATCH_SHAPE[0], 2, BATCH_SHAPE[1], generator=generator)
    mixture = sources.sum(dim=1)
    difference = _max_output_difference(reference, model, mixture)
    if not difference <= 1e-5:
        raise RuntimeError(f"{name}: sepkit and Asteroid outputs differ by {difference:.3g} (> 1e-5)")

    asteroid_loss = PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx")
    sides = {
        "sepkit": _step_function(model, lambda est, ref: pit_si_sdr_loss(est, ref)[0], mixture, sources),
        "asteroid": _step_function(reference, asteroid_loss, mixture, sources),
    }
    for _ in range(warmup):
        for step in sides.values():
            step()
    times: dict[str, list[float]] = {"sepkit": [], "asteroid": []}
    for round_index in range(rounds):
        # A B, then B A: neither side always runs right after the other.
        order = ("sepkit", "asteroid") if round_index % 2 == 0 else ("asteroid", "sepkit")
        for side in order:
            times[side].append(sides[side]())
        print(
            f"  {name} round {round_index + 1}/{rounds}: sepkit {times['sepkit'][-1]:.3f} s, "
            f"asteroid {times['asteroid'][-1]:.3f} s (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    paired = sorted(s / a for s, a in zip(times["sepkit"], times["asteroid"]))
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
    median_sepkit = statistics.median(times["sepkit"])
    median_asteroid = statistics.median(times["asteroid"])
    return {
        "asteroid_model": ASTEROID_MODELS[name][0],
        "asteroid_kwargs": ASTEROID_MODELS[name][1],
        "parameters": sum(p.numel() for p in model.parameters()),
        "max_output_difference": difference,
        "median_step_s": {"sepkit": median_sepkit, "asteroid": median_asteroid},
        "ratio": median_sepkit / median_asteroid,
        "target_ratio": TARGETS[name],
        "round_ratio_min_q1_median_q3_max": [paired[0], quartiles[0], quartiles[1], quartiles[2], paired[-1]],
        "step_s": times,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(ASTEROID_MODELS), default=list(ASTEROID_MODELS))
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per side and model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "step_time.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")

    import asteroid

    # What `sepkit train` sets for its process (sepkit.allocator). Both sides run in this
    # process, so Asteroid's steps get it too, which only favours Asteroid: its own
    # training scripts leave glibc's defaults.
    keep_freed_memory()
    torch.set_num_threads(THREADS)
    environment = {
        "batch_shape": list(BATCH_SHAPE),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "asteroid": asteroid.__version__,
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "allocator": "sepkit.allocator.keep_freed_memory (both sides)",
    }
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    for name in args.models:
        print(f"{name}:", flush=True)
        # The machine may be shared: both sides run interleaved, so load slows both, but
        # the spread of the per-round ratios says how much to trust the medians.
        load_start = os.getloadavg()
        row = bench_model(name, args.rounds, args.warmup)
        row.update(
            command=command,
            rounds=args.rounds,
            warmup=args.warmup,
            finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            load_average_1_5_15min={"start": list(load_start), "end": list(os.getloadavg())},
        )
        spread = row["round_ratio_min_q1_median_q3_max"]
        print(
            f"{name}: sepkit {row['median_step_s']['sepkit']:.3f} s, asteroid {row['median_step_s']['asteroid']:.3f} s, "
            f"ratio {row['ratio']:.2f} (target {row['target_ratio']:.2f}; rounds {spread[0]:.2f}..{spread[-1]:.2f})",
            flush=True,
        )
        _record(args.output, environment, name, row)
    print(f"wrote {args.output}")


def _record(path: Path, environment: dict, name: str, row: dict) -> None:
    """Write one model's result into ``path``, keeping the other models' entries when
    they were measured in the same environment (so models can be run separately)."""
    report = {**environment, "models": {}}
    if path.exists():
        previous = json.loads(path.read_text())
        if all(previous.get(key) == value for key, value in environment.items()):
            report["models"] = previous.get("models", {})
    report["models"][name] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
