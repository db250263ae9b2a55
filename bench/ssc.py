"""SSC layer benchmark: forward and forward+backward time of SSC against nn.Linear,
Conv1d(k) and depthwise-separable Conv1d(k), each printed as a ratio to nn.Linear timed in
the same run, saved as JSON in bench/results/.

Shapes (issue #6):
  sepformer_ffn_up / _down   32768 tokens (128 chunks x 256 steps), 256 -> 1024 / 1024 -> 256,
                             channels last ([chunks, steps, features], SSCLinear)
  conv_tasnet_1x1_up / _down batch 4 x 4000 frames, 128 -> 512 / 512 -> 128, channels first
                             ([batch, channels, frames], SSCConv1d)
K in {3, 9, 31}; fp32 and bf16. Methods: linear (nn.Linear on the channels-last tensor),
conv (nn.Conv1d(k), "same" padding), dwsep (depthwise Conv1d(k) + 1x1), ssc_ref (plain
PyTorch reference), ssc_ref_compiled (the reference under torch.compile), ssc_fused (the
Triton custom op; CUDA only). Forward+backward computes the gradients of the input and of
every parameter, as a layer inside a network does.

Usage:
  python bench/ssc.py                 # CPU, then CUDA if available; full repeats
  python bench/ssc.py --quick         # fewer repeats, K=3 only for conv/compiled baselines
  python bench/ssc.py --threads 1     # one CPU thread (steadier on a shared machine)
  python bench/ssc.py --device cuda --dtypes bf16 --ks 3

CPU allocation: two settings, both applied before torch is imported and recorded in
the JSON, so that the ratios measure arithmetic and memory traffic rather than how the
kernel hands out fresh pages (each method allocates activation-sized buffers on every
call; SSC one more than Linear, its saved ``rc(X)``):
  * transparent huge pages for large CPU tensors (PyTorch's ``THP_MEM_ALLOC_ENABLE=1``,
    unless ``--no-thp`` or the variable is already set). With 4 KiB pages every fresh
    100 MB+ activation pays ~0.5 ms of page faults per MB on first touch.
  * ``--cpu-allocator cached`` (default, glibc only): freed memory stays mapped in the
    heap and is reused (``mallopt``: no mmap for large blocks, no trimming), which is what
    PyTorch's caching allocator does on a GPU. With glibc's defaults (``system``) each
    large block is unmapped on free and faulted back in on the next call, and on a shared
    VM some of those faults stall for hundreds of ms, which made single samples of either
    method 1.5-2x slower at random.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _keep_freed_memory_mapped() -> bool:
    """glibc ``mallopt``: serve large blocks from the heap (M_MMAP_MAX = 0) and never trim
    it (M_TRIM_THRESHOLD = max), so freed activations are reused instead of unmapped.
    False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def _add_allocation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-thp", action="store_true", help="plain 4 KiB pages for CPU tensors (see CPU allocation above)"
    )
    parser.add_argument(
        "--cpu-allocator",
        choices=["cached", "system"],
        default="cached",
        help="cached: glibc keeps freed memory for reuse; system: glibc defaults",
    )


# Both must precede the torch import: c10 reads THP_MEM_ALLOC_ENABLE once when its CPU
# allocator starts, and mallopt should govern every large block torch allocates.
_early_parser = argparse.ArgumentParser(add_help=False)
_add_allocation_options(_early_parser)
_allocation, _ = _early_parser.parse_known_args()
if not _allocation.no_thp:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
CPU_ALLOCATOR = _allocation.cpu_allocator
if CPU_ALLOCATOR == "cached" and not _keep_freed_memory_mapped():
    CPU_ALLOCATOR = "system (no glibc mallopt)"

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepkit.fileio import write_text_atomic  # noqa: E402
from sepkit.nn import SSCConv1d, SSCLinear  # noqa: E402
from sepkit.ops import use_backend  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# name: (leading shape, in, out, layout); leading shape is [chunks, steps] or [batch, frames]
SHAPES = {
    "sepformer_ffn_up": ((128, 256), 256, 1024, "channels_last"),
    "sepformer_ffn_down": ((128, 256), 1024, 256, "channels_last"),
    "conv_tasnet_1x1_up": ((4, 4000), 128, 512, "channels_first"),
    "conv_tasnet_1x1_down": ((4, 4000), 512, 128, "channels_first"),
}


class ChannelsFirst(nn.Module):
    """Runs a ``[batch, channels, time]`` layer on a ``[batch, time, channels]`` tensor or
    the other way round, so every method sees the benchmark's own layout."""

    def __init__(self, layer: nn.Module, transpose_in: bool) -> None:
        super().__init__()
        self.layer = layer
        self.transpose_in = transpose_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transpose_in:
            return self.layer(x.transpose(1, 2)).transpose(1, 2)
        return self.layer(x)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call (CUDA: measured with events around it)."""
    if device.type == "cuda":
        start_event = torch.cuda.Event(enable_timing=True)
        end_event = torch.cuda.Event(enable_timing=True)
        start_event.record()
        fn()
        end_event.record()
        end_event.synchronize()
        return start_event.elapsed_time(end_event) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_paired(
    baseline: Callable[[], object],
    method: Callable[[], object],
    device: torch.device,
    min_time: float,
    min_repeats: int,
    max_repeats: int,
    slow_warmup_s: float | None,
) -> tuple[float, float, int, float]:
    """(median baseline s, median method s, pairs, median of the per-pair ratios): after
    one warm-up call of each, the two are called alternately until ``min_time`` has passed
    and ``min_repeats`` pairs are done (at most ``max_repeats``), so a change of machine
    load hits both alike; the ratio of each pair, not of the two medians, is what is
    reported, so that slow drift within a row cancels. A method whose warm-up took longer
    than ``slow_warmup_s`` is steady-state compute already: its warm-up is the single
    sample, paired with one baseline call right after it."""
    method_warmup = _timed(method, device)
    if slow_warmup_s is not None and method_warmup > slow_warmup_s:
        baseline_time = _timed(baseline, device)
        return baseline_time, method_warmup, 1, method_warmup / baseline_time
    _timed(baseline, device)
    baseline_times: list[float] = []
    method_times: list[float] = []
    started = time.perf_counter()
    while len(method_times) < max_repeats and (
        len(method_times) < min_repeats or time.perf_counter() - started < min_time
    ):
        baseline_times.append(_timed(baseline, device))
        method_times.append(_timed(method, device))
    ratios = [m / b for m, b in zip(method_times, baseline_times)]
    return (
        statistics.median(baseline_times),
        statistics.median(method_times),
        len(method_times),
        statistics.median(ratios),
    )


def build_methods(
    shape_name: str, k: int, device: torch.device, dtype: torch.dtype, with_conv: bool, with_compiled: bool
) -> dict[str, nn.Module]:
    """Layers to compare for one shape and K, on the shape's layout."""
    _, c_in, c_out, layout = SHAPES[shape_name]
    channels_last = layout == "channels_last"
    methods: dict[str, nn.Module] = {}
    # nn.Linear always sees channels last: for channels-first shapes it gets its own
    # contiguous channels-last copy of the input (made outside the timed region).
    methods["linear"] = nn.Linear(c_in, c_out)
    if with_conv:
        methods["conv"] = ChannelsFirst(nn.Conv1d(c_in, c_out, k, padding=k // 2), channels_last)
        methods["dwsep"] = ChannelsFirst(
            nn.Sequential(nn.Conv1d(c_in, c_in, k, padding=k // 2, groups=c_in), nn.Conv1d(c_in, c_out, 1)),
            channels_last,
        )
    ssc_layer = SSCLinear(c_in, c_out, k) if channels_last else SSCConv1d(c_in, c_out, k)
    methods["ssc_ref"] = ssc_layer
    if with_compiled:
        methods["ssc_ref_compiled"] = torch.compile(ssc_layer, dynamic=False)
    if device.type == "cuda":
        methods["ssc_fused"] = ssc_layer
    return {name: m.to(device=device, dtype=dtype) for name, m in methods.items()}


def _forward(layer: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        layer(x)


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> None:
    y = layer(x)
    y.backward(torch.ones_like(y))


def run(
    device: torch.device,
    dtypes: list[str],
    ks: list[int],
    shapes: list[str],
    quick: bool,
    conv_ks: list[int],
    compiled_ks: list[int],
    cpu_bf16_conv: bool,
    compile_dtypes: list[str],
    on_row: Callable[[list[dict]], None],
) -> list[dict]:
    """Time every method; ``on_row(rows)`` is called after each new row (partial saves)."""
    # CPU: at least 5 pairs and 3 s per row; a shared VM's noise moves single calls by 10%+.
    min_time = 0.2 if quick else 3.0 if device.type == "cpu" else 1.0
    min_repeats = 1 if quick else 5 if device.type == "cpu" else 3
    max_repeats = 3 if quick else 20
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for shape_name in shapes:
            lead, c_in, c_out, layout = SHAPES[shape_name]
            channels_last = layout == "channels_last"
            generator = torch.Generator().manual_seed(0)
            x_cl = torch.randn(*lead, c_in, generator=generator).to(device=device, dtype=dtype)
            x_native = x_cl if channels_last else x_cl.transpose(1, 2).contiguous()
            linear_done = False
            for k in ks:
                # CPUs without bf16 matrix units emulate bf16 convolutions: one call of
                # Conv1d(k=3) at the SepFormer shape takes minutes there.
                with_conv = k in conv_ks and (device.type != "cpu" or dtype != torch.bfloat16 or cpu_bf16_conv)
                with_compiled = k in compiled_ks and dtype_name in compile_dtypes
                methods = build_methods(shape_name, k, device, dtype, with_conv, with_compiled)
                linear = methods["linear"]
                x_lin_grad = x_cl.detach().requires_grad_()
                baselines = {
                    "fwd": lambda linear=linear, x=x_cl: _forward(linear, x),
                    "fwd_bwd": lambda linear=linear, x=x_lin_grad: _forward_backward(linear, x),
                }
                for name, layer in methods.items():
                    if name == "linear" and linear_done:
                        continue
                    x = x_cl if name == "linear" else x_native
                    x_grad = x.detach().requires_grad_()
                    candidates = {
                        "fwd": lambda layer=layer, x=x: _forward(layer, x),
                        "fwd_bwd": lambda layer=layer, x_grad=x_grad: _forward_backward(layer, x_grad),
                    }
                    backend = "triton" if name == "ssc_fused" else "reference"
                    # Compiled methods compile during their warm-up: never a sample.
                    slow = None if name == "ssc_ref_compiled" else 3.0
                    row = {
                        "device": device.type,
                        "dtype": dtype_name,
                        "shape": shape_name,
                        "tokens": lead[0] * lead[1],
                        "in": c_in,
                        "out": c_out,
                        "layout": layout,
                        "k": None if name == "linear" else k,
                        "method": name,
                    }
                    with use_backend(backend):
                        for phase in ("fwd", "fwd_bwd"):
                            t_base, t_method, pairs, ratio = time_paired(
                                baselines[phase],
                                candidates[phase],
                                device,
                                min_time,
                                min_repeats,
                                max_repeats,
                                slow,
                            )
                            row[f"{phase}_s"] = t_method
                            row[f"{phase}_linear_s"] = t_base
                            row[f"{phase}_pairs"] = pairs
                            row[f"{phase}_ratio"] = ratio
                    linear_done = linear_done or name == "linear"
                    rows.append(row)
                    on_row(rows)
                    print(
                        f"{device.type:4s} {dtype_name:4s} {shape_name:21s} "
                        f"K={'-' if row['k'] is None else row['k']:>2} {name:17s} "
                        f"fwd {row['fwd_s'] * 1e3:9.2f} ms ({row['fwd_ratio']:5.2f}x)   "
                        f"fwd+bwd {row['fwd_bwd_s'] * 1e3:9.2f} ms ({row['fwd_bwd_ratio']:5.2f}x)",
                        flush=True,
                    )
                del methods
    return rows


def summarize(rows: list[dict]) -> dict:
    """Worst ratios against the issue's targets."""
    summary: dict[str, object] = {}
    linear = [r for r in rows if r["method"] == "linear"]
    if linear:
        # nn.Linear against itself: how far this run's noise moves a ratio.
        summary["linear_vs_itself_fwd_bwd_ratio_range"] = [
            min(r["fwd_bwd_ratio"] for r in linear),
            max(r["fwd_bwd_ratio"] for r in linear),
        ]
    ref = [r for r in rows if r["method"] == "ssc_ref" and r["device"] == "cpu"]
    if ref:
        summary["cpu_ssc_ref_fwd_bwd_ratio_max"] = max(r["fwd_bwd_ratio"] for r in ref)
        summary["cpu_target_1.25x_met"] = summary["cpu_ssc_ref_fwd_bwd_ratio_max"] <= 1.25
    fused = [r for r in rows if r["method"] == "ssc_fused"]
    if fused:
        summary["gpu_ssc_fused_fwd_bwd_ratio_max"] = max(r["fwd_bwd_ratio"] for r in fused)
        spreads = []
        for key in {(r["dtype"], r["shape"]) for r in fused}:
            times = [r["fwd_bwd_s"] for r in fused if (r["dtype"], r["shape"]) == key]
            spreads.append(max(times) / min(times) - 1)
        summary["gpu_ssc_fused_spread_across_k_max"] = max(spreads)
        summary["gpu_target_met"] = summary["gpu_ssc_fused_fwd_bwd_ratio_max"] <= 1.10 and max(spreads) <= 0.05
    return summary


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, then CUDA when available"
    )
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--ks", default="3,9,31")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--quick", action="store_true", help="fewer repeats; conv/dwsep/compiled baselines at K=3 only")
    parser.add_argument("--no-compile", action="store_true", help="skip ssc_ref_compiled")
    parser.add_argument("--no-conv", action="store_true", help="skip the conv and dwsep baselines")
    parser.add_argument(
        "--compile-ks", default=None, help="K values for which ssc_ref_compiled is timed (default: as conv)"
    )
    parser.add_argument("--compile-dtypes", default="fp32,bf16", help="dtypes for which ssc_ref_compiled is timed")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); default: torch's choice"
    )
    parser.add_argument(
        "--cpu-bf16-conv",
        action="store_true",
        help="also time bf16 conv/dwsep on the CPU (minutes per call without bf16 units)",
    )
    _add_allocation_options(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/ssc_<device>[_quick].json)"
    )
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    dtypes = args.dtypes.split(",")
    shapes = args.shapes.split(",")
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for device in devices:
        conv_ks = [] if args.no_conv else ks[:1] if args.quick else ks
        if args.no_compile:
            compiled_ks: list[int] = []
        elif args.compile_ks:
            compiled_ks = [int(k) for k in args.compile_ks.split(",")]
        else:
            compiled_ks = conv_ks
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        suffix = "_quick" if args.quick else ""
        out = args.out or RESULTS_DIR / f"ssc_{device.type}{suffix}.json"

        def payload_for(
            rows: list[dict], complete: bool, device: torch.device = device, load_at_start: float | None = load
        ) -> dict:
            return {
                "benchmark": "ssc",
                "complete": complete,
                "device": (
                    torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else platform.processor() or platform.machine()
                ),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                "cpu_allocator": CPU_ALLOCATOR,
                "load_average_1min_at_start": load_at_start,
                "load_average_1min_now": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                "quick": args.quick,
                "command": " ".join(["python", "bench/ssc.py", *(argv if argv is not None else sys.argv[1:])]),
                "notes": (
                    "CPU bf16 conv/dwsep baselines skipped (emulated bf16 convolutions take "
                    "minutes per call); rerun with --cpu-bf16-conv to include them"
                    if device.type == "cpu" and "bf16" in dtypes and not args.cpu_bf16_conv
                    else ""
                ),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "summary": summarize(rows),
                "rows": rows,
            }

        rows = run(
            device,
            dtypes,
            ks,
            shapes,
            args.quick,
            conv_ks,
            compiled_ks,
            args.cpu_bf16_conv,
            args.compile_dtypes.split(","),
            on_row=lambda partial, out=out: write_json(out, payload_for(partial, complete=False)),
        )
        payload = payload_for(rows, complete=True)
        write_json(out, payload)
        print(json.dumps(payload["summary"], indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
