"""Model zoo benchmark: every registered separator at its paper configuration.

Per model (each in a fresh subprocess): parameters; MACs for one input of
``--seconds`` at the model's sample rate (matmul/conv/attention MACs from
``torch.utils.flop_counter.FlopCounterMode`` as FLOPs/2, plus the recurrent matmuls
counted analytically, since the counter does not see ``aten::lstm``); peak activation
memory of a forward pass and of a forward+backward pass (most tensor bytes alive at once
beyond weights and input, ``sepkit.profiling.PeakMemoryMode``); forward (no grad) and
forward+backward time as CPU seconds with ``--threads`` intra-op threads (median of
``--repeats`` runs after one warm-up). CPU time rather than wall time because this
machine is shared: with one thread it is the time on one otherwise idle core.

With ``--train`` it also trains each ``recipes/synthetic/<model>.yaml`` for a fixed
budget of ``--train-steps`` optimizer steps (not wall time, which depends on how loaded
the machine is) and records the test-set SI-SDRi of the final weights in zoo.json (not in
the table: such a short budget does not rank the models).

Prints a Markdown table and writes ``bench/results/zoo.json`` and ``zoo.md`` atomically.

    PYTHONPATH=. python bench/zoo.py                          # measurements
    PYTHONPATH=. python bench/zoo.py --reuse --train         # + synthetic training
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Extra rows beside each registered model's defaults: named paper variants.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sudormrf_0.5x": ("sudormrf", {"n_blocks": 8}),
    "sudormrf_0.25x": ("sudormrf", {"n_blocks": 4}),
}

# Training passes measured on a shorter input: DPRNN's L=2 encoder gives 8000 frames/s
# and CPU LSTM training keeps every time step's gates, about 3.6 GB per second of audio,
# too much for a shared 2-core machine at 4 s; A-FRCNN's 16 unfolded blocks and
# DP-RCNet's 18 LSTM blocks keep similar amounts. Their cost is linear in the length.
TRAIN_SECONDS = {"dprnn": 1.0, "afrcnn": 1.0, "dprcnet": 1.0}


def _median_cpu_time(fn, repeats: int) -> float:
    # CPU seconds of this process, not wall time: on a shared machine wall time mostly
    # measures the other jobs; with one intra-op thread the CPU time is the time the
    # pass takes on one otherwise idle core.
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(
    name: str, config: dict[str, Any], seconds: float, train_seconds: float, repeats: int, threads: int
) -> dict[str, Any]:
    """All per-model figures; run in a fresh process (see ``main``)."""
    from sepkit.models import build_model
    from sepkit.profiling import PeakMemoryMode, count_macs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name, **config)
    wav = torch.randn(1, int(seconds * model.sample_rate))
    train_wav = torch.randn(1, int(train_seconds * model.sample_rate))

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(wav)

    def forward_backward() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        model(train_wav).square().mean().backward()

    # The memory passes double as warm-ups (allocator, oneDNN primitive caches) for the
    # timed passes. Peak = most tensor bytes alive at once beyond weights and input, as
    # `sepkit profile` measures it (independent of the allocator and of other processes).
    with PeakMemoryMode() as forward_memory:
        forward()
    with PeakMemoryMode() as train_memory:
        forward_backward()
    forward_s = _median_cpu_time(forward, repeats)
    train_s = _median_cpu_time(forward_backward, repeats)
    model.eval()
    macs = count_macs(model, wav)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": macs / 1e9,
        "forward_peak_mib": forward_memory.peak / 2**20,
        "train_peak_mib": train_memory.peak / 2**20,
        "forward_s": forward_s,
        "forward_backward_s": train_s,
        "train_seconds": train_seconds,
        "load_average_1min": os.getloadavg()[0],
    }


def _run_worker(name: str, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        json.dumps(config),
        "--seconds",
        str(args.seconds),
        "--train-seconds",
        str(TRAIN_SECONDS.get(name, args.seconds)),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench/zoo.py: measuring {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_recipe(recipe: Path, steps: int, synthetic_root: Path, workdir: Path) -> dict[str, Any]:
    """Train a synthetic recipe for a fixed number of optimizer steps (a budget that does
    not depend on how loaded the machine is), then test the final weights.

    Returns the test metrics ``sepkit train`` logged, the steps and the wall time."""
    run_dir = workdir / recipe.stem
    run_dir.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "sepkit.cli",
        "train",
        "--config",
        str(recipe),
        "--trainer.max_steps",
        str(steps),
        "--trainer.max_time",
        "null",
        "--trainer.max_epochs",
        "-1",
        # One validation exactly at the end of the budget (an epoch is longer), so the
        # checkpoint and early-stopping callbacks see val/loss.
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.check_val_every_n_epoch",
        "null",
        "--data.synthetic_root",
        str(synthetic_root),
        "--checkpoint.dirpath",
        str(run_dir / "checkpoints"),
        "--test_after_fit",
        "true",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    # Run inside run_dir: the run folder (checkpoints, logs) is ./runs/<recipe folder>_<stem>.
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=run_dir, check=False)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"bench/zoo.py: training {recipe} failed:\n{done.stderr[-3000:]}")
    test_metrics: dict[str, float] = {}
    for metrics_csv in sorted(run_dir.glob("runs/**/metrics.csv")):
        with metrics_csv.open() as handle:
            for record in csv.DictReader(handle):
                test_metrics.update({k: float(v) for k, v in record.items() if k.startswith("test/") and v})
    if "test/si_sdri" not in test_metrics:
        raise RuntimeError(f"bench/zoo.py: no test/si_sdri logged for {recipe}:\n{done.stderr[-2000:]}")
    return {"recipe": str(recipe.relative_to(ROOT)), "steps": steps, "wall_s": wall_s, **test_metrics}


def _table(rows: list[dict[str, Any]], seconds: float, threads: int) -> str:
    # The --train SI-SDRi stays in zoo.json only: a budget of a few hundred steps is the
    # start of training and does not rank the models, so the table does not show it.
    header = "| model | params | GMACs | fwd peak (MiB) | fwd+bwd peak (MiB) | fwd CPU (s) | fwd+bwd CPU (s) |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    lines = [
        f"Input: {seconds:g} s at 8 kHz, batch 1; times are CPU seconds with {threads} thread(s). "
        "MACs: matmul/conv/attention/RNN multiply-accumulates of one forward pass. "
        "Peak: most activation bytes alive at once (beyond weights and input).",
        "",
        header,
        rule,
    ]
    notes = []
    for row in rows:
        mark = ""
        if row["train_seconds"] != seconds:
            mark = "*"
            notes.append(
                f"\\* {row['label']}: training pass on {row['train_seconds']:g} s of input "
                "(see TRAIN_SECONDS in bench/zoo.py)."
            )
        lines.append(
            f"| {row['label']} | {row['params']:,} | {row['gmacs']:.2f} | {row['forward_peak_mib']:.0f} | "
            f"{row['train_peak_mib']:.0f}{mark} | {row['forward_s']:.2f} | {row['forward_backward_s']:.2f}{mark} |"
        )
    return "\n".join(lines + [""] + notes) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="registered names or variant labels (default: all)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--train-seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="also train the synthetic recipes")
    parser.add_argument("--train-steps", type=int, default=150, help="optimizer steps per synthetic recipe")
    parser.add_argument("--synthetic-root", type=Path, default=ROOT / "data" / "synthetic")
    parser.add_argument("--reuse", action="store_true", help="keep the measurements already in --out")
    parser.add_argument("--out", type=Path, default=RESULTS / "zoo.json")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        name, config = args.worker
        train_seconds = args.train_seconds or args.seconds
        print(json.dumps(measure(name, json.loads(config), args.seconds, train_seconds, args.repeats, args.threads)))
        return

    from sepkit.fileio import write_text_atomic
    from sepkit.models import list_models

    entries = [(name, name, {}) for name in list_models()]
    entries += [(label, name, config) for label, (name, config) in VARIANTS.items()]
    if args.models:
        entries = [entry for entry in entries if entry[0] in args.models]
    previous = {}
    if args.reuse and args.out.exists():
        previous = {row["label"]: row for row in json.loads(args.out.read_text())["rows"]}
    rows = []
    for label, name, config in entries:
        if label in previous:
            rows.append(previous[label])
            continue
        print(f"measuring {label} ...", file=sys.stderr, flush=True)
        rows.append({"label": label, "model": name, "config": config, **_run_worker(name, config, args)})

    if args.train:
        with tempfile.TemporaryDirectory() as workdir:
            for row in rows:
                recipe = ROOT / "recipes" / "synthetic" / f"{row['label'].replace('_', '')}.yaml"
                if row["config"] or not recipe.exists():
                    continue
                print(f"training {recipe.name} for {args.train_steps} steps ...", file=sys.stderr, flush=True)
                result = train_recipe(recipe, args.train_steps, args.synthetic_root.resolve(), Path(workdir))
                row["synthetic_si_sdri"] = result["test/si_sdri"]
                row["synthetic_training"] = result

    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "seconds": args.seconds,
        "repeats": args.repeats,
        "rows": rows,
    }
    table = _table(rows, args.seconds, args.threads)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
