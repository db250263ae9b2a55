"""``sepkit profile``: parameters, MACs, peak memory, forward latency and real-time factor
of a model for a given input."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sepkit.fileio import write_text_atomic
from sepkit.models import build_model, list_models
from sepkit.nn.depthwise import DepthwiseConv1d


class PeakMemoryMode(TorchDispatchMode):
    """Tracks bytes of tensor storage allocated by operators inside the mode and their
    peak. Storages are released when freed (PyTorch keeps one Python object per
    storage, so a finalizer fires at the real deallocation). Works on any device;
    tensors that existed before entering the mode (weights, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key)
        return out


def _process_status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) << 10
    raise OSError(f"/proc/self/status has no {field}")


@torch.no_grad()
def peak_activation_bytes(model: torch.nn.Module, wav: torch.Tensor) -> int:
    """Peak memory that one forward pass of ``model`` on ``wav`` adds to what is already
    allocated, measured without entering a dispatch mode where possible:

    - CUDA: the caching allocator's peak statistics;
    - CPU on Linux: the process's resident high-water mark, reset through
      ``/proc/self/clear_refs`` (so malloc's own overhead counts too);
    - elsewhere: :class:`PeakMemoryMode`. Entering any ``TorchDispatchMode`` imports
      torch's Python dispatch machinery (sympy, mpmath and ~900 modules: ~140 MiB of
      resident memory for the rest of the process), which the other two avoid.
    """
    device = wav.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        model(wav)
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    if device.type == "cpu":
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # VmHWM := VmRSS
            start = _process_status_bytes("VmRSS")
            model(wav)
            return max(0, _process_status_bytes("VmHWM") - start)
        except OSError:
            pass  # not Linux, or /proc not writable: count tensor storage instead
    with PeakMemoryMode() as memory:
        model(wav)
    return memory.peak


# Gate count per recurrent layer type: FlopCounterMode does not see aten::lstm & co.
RNN_GATES = {torch.nn.LSTM: 4, torch.nn.GRU: 3, torch.nn.RNN: 1}


def count_macs(model: torch.nn.Module, wav: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass: FlopCounterMode (FLOPs / 2) for
    matmuls, convolutions and attention, plus recurrent layers counted from their
    shapes (input and hidden projections of every gate, layer and direction) and
    :class:`~sepkit.nn.depthwise.DepthwiseConv1d` layers (channels x taps per output)."""
    rnn_macs = extra_macs = 0

    def rnn_hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        nonlocal rnn_macs
        x = inputs[0]
        batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
        directions = 2 if module.bidirectional else 1
        gates = RNN_GATES[type(module)] * module.hidden_size
        for layer in range(module.num_layers):
            in_size = module.input_size if layer == 0 else module.hidden_size * directions
            rnn_macs += directions * batch * steps * gates * (in_size + module.hidden_size)

    def depthwise_hook(module: DepthwiseConv1d, _: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        # Computed with elementwise multiply-adds, which FlopCounterMode does not count.
        nonlocal extra_macs
        extra_macs += out.numel() * module.kernel_size[0]

    handles = [m.register_forward_hook(rnn_hook) for m in model.modules() if type(m) in RNN_GATES]
    handles += [m.register_forward_hook(depthwise_hook) for m in model.modules() if isinstance(m, DepthwiseConv1d)]
    try:
        # Imported here: torch.utils.flop_counter adds ~70 MiB of resident memory, which
        # `sepkit separate` (it imports this module for peak_activation_bytes) should not carry.
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(wav)
    finally:
        for handle in handles:
            handle.remove()
    return int(counter.get_total_flops() // 2 + rnn_macs + extra_macs)


def profile_model(model: torch.nn.Module, seconds: float = 4.0, batch: int = 1) -> dict[str, Any]:
    """Parameters, MACs (see :func:`count_macs`) and peak activation memory (bytes beyond weights and
    input) for inference (no grad) and for a training step (forward + backward)."""
    length = int(round(seconds * model.sample_rate))
    mixture = torch.randn(batch, length, device=next(model.parameters()).device)
    model.eval()
    macs = count_macs(model, mixture)
    with torch.no_grad(), PeakMemoryMode() as inference:
        model(mixture)
    model.train()
    with PeakMemoryMode() as training:
        model(mixture).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": macs,
        "peak_inference_bytes": inference.peak,
        "peak_training_bytes": training.peak,
        "seconds": seconds,
        "batch": batch,
        "sample_rate": int(model.sample_rate),
    }


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock reading covers the work it times."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: torch.nn.Module, seconds: float = 4.0, batch: int = 1, repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Wall-clock time of one inference forward pass on ``[batch, time]`` white noise
    (``time = round(seconds * sample_rate)``) on the model's device, in eval mode.

    ``warmup`` untimed passes come first (allocator, oneDNN/cuDNN algorithm choice and
    lazy initialisation would otherwise inflate the first readings); then ``repeats``
    timed passes. The real-time factor is the median latency over the duration of audio
    one pass separates, ``batch * time / sample_rate`` seconds: below 1 is faster than
    real time.
    """
    device = next(model.parameters()).device
    length = int(round(seconds * model.sample_rate))
    generator = torch.Generator().manual_seed(0)
    mixture = torch.randn(batch, length, generator=generator).to(device)
    model.eval()
    for _ in range(warmup):
        model(mixture)
    latencies = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        model(mixture)
        _synchronize(device)
        latencies.append(time.perf_counter() - start)
    quartiles = statistics.quantiles(latencies, n=4, method="inclusive") if repeats > 1 else [latencies[0]] * 3
    median = statistics.median(latencies)
    audio_seconds = batch * length / model.sample_rate
    return {
        "latencies_s": latencies,
        "latency_median_s": median,
        "latency_min_s": min(latencies),
        "latency_max_s": max(latencies),
        "latency_iqr_s": quartiles[2] - quartiles[0],
        "audio_seconds": audio_seconds,
        "rtf": median / audio_seconds,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def load_model_config(path: str | Path, model_name: str) -> dict[str, Any]:
    """Model config from a YAML file: either the model's constructor arguments or a
    ``sepkit train`` recipe (``model.model_name`` / ``model.model_config``)."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    if "model" in config and isinstance(config["model"], dict) and "model_config" in config["model"]:
        recipe_name = config["model"].get("model_name", model_name)
        if recipe_name != model_name:
            raise ValueError(f"{path}: recipe is for model {recipe_name!r}, not {model_name!r}")
        config = config["model"]["model_config"] or {}
    return dict(config)


def _mebibytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _option_problem(args: argparse.Namespace) -> str | None:
    """The first unusable numeric option, as one line; None if all are usable."""
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        return f"--seconds must be a positive number of seconds, got {args.seconds}"
    for name, value, least in (
        ("--batch", args.batch, 1),
        ("--threads", args.threads, 1),
        ("--repeats", args.repeats, 1),
        ("--warmup", args.warmup, 0),
    ):
        if value is not None and value < least:
            return f"{name} must be at least {least}, got {value}"
    return None


def profile_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sepkit profile",
        description="Parameters, MACs, peak memory, forward latency and real-time factor (RTF) of a model.",
    )
    parser.add_argument("model", help=f"registered model name or 'all' ({', '.join(list_models())})")
    parser.add_argument("--config", default=None, help="YAML with the model's config, or a sepkit train recipe")
    parser.add_argument("--seconds", type=float, default=4.0, help="input length in seconds (default 4)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--device", default="cpu", help="device to profile on: cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch's operators (torch.set_num_threads; default: torch's own choice)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes before timing (default 2)")
    args = parser.parse_args(argv)
    problem = _option_problem(args)
    if problem:
        print(f"sepkit profile: {problem}", file=sys.stderr)
        return 2
    if args.threads is not None:
        # Once, before any model runs: this process never changes the thread count again.
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        print(f"sepkit profile: --device {args.device!r}: {error}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"sepkit profile: --device {args.device!r}: CUDA is not available", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        print(f"sepkit profile: --device {args.device!r}: only {torch.cuda.device_count()} GPU(s)", file=sys.stderr)
        return 2

    from rich.console import Console
    from rich.table import Table

    names = list_models() if args.model == "all" else [args.model]
    if args.model != "all" and args.model not in list_models():
        print(f"sepkit profile: unknown model {args.model!r}; available: {', '.join(list_models())}", file=sys.stderr)
        return 2
    where = f"{device}, {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else str(device)
    table = Table(
        title=f"{args.seconds:g} s input, batch {args.batch} on {where}; "
        f"latency: median ± IQR of {args.repeats} after {args.warmup} warm-up"
    )
    columns = (
        "model",
        "parameters",
        "MACs",
        "peak memory (inference)",
        "peak memory (train step)",
        "latency ms",
        "RTF",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    results = {}
    for name in names:
        config = load_model_config(args.config, name) if args.config else {}
        model = build_model(name, **config).to(device)
        # Timed first, on a model that no profiling mode or training step has touched.
        latency = measure_latency(model, args.seconds, args.batch, args.repeats, args.warmup)
        stats = {**profile_model(model, args.seconds, args.batch), **latency}
        results[name] = stats
        table.add_row(
            name,
            f"{stats['parameters']:,}",
            f"{stats['macs'] / 1e9:,.2f} G",
            _mebibytes(stats["peak_inference_bytes"]),
            _mebibytes(stats["peak_training_bytes"]),
            f"{stats['latency_median_s'] * 1e3:,.1f} ± {stats['latency_iqr_s'] * 1e3:,.1f}",
            f"{stats['rtf']:.3f}",
        )
    Console().print(table)
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0
