"""Export a separator to ONNX (``.onnx``) or a ``torch.export`` archive (``.pt2``).

What is exported is the model's core, :meth:`EncoderMaskerDecoder.separate_padded`:
``[batch, P] -> [batch, n_src, P]`` on an input already padded onto the model's length
grid. The framing around it (pad on the right, crop or zero-fill the tail) is plain
arithmetic that :class:`ExportedSeparator` repeats from the artefact's recorded
framing, so a loaded artefact takes any ``[batch, time]`` like the eager model.

Graph lengths ``P`` form an arithmetic grid ``P = base + step * k`` (see
:func:`graph_length`): ``"end"``/``"truncate"`` framing ``base = padded_length(1)``,
``step = lcm(stride, length_multiple)``; ``"centered"`` ``base = step =
length_multiple``; ``"hop_padded"`` odd multiples of ``stride``. The exported graph is
dynamic in ``k >= k_min`` (a derived ``torch.export.Dim``) and in the batch. torch.export
assumes no axis has size 1, and near ``k = 0`` some model-internal axis does (one frame,
one output of a dilated convolution), so the program is compared with the eager core at
``k = 2 .. 8`` and ``k_min`` (recorded as ``min_grid_index``) is the first from which it
agrees; a shorter input (a few encoder hops, milliseconds) is refused with an error.
A model that normalises its unpadded input in ``forward`` (SuDoRM-RF's
``normalize_input``) records it, and the runner normalises around the graph the same way.

Models with an ``nn.LSTM`` across a length-dependent axis (DPRNN, DP-RCNet, GC3:
the inter-chunk RNN runs over ``n_chunks``) cannot be exported with a dynamic length
in torch 2.13, whose export specialises the LSTM's sequence length. They are exported
at declared input lengths (``lengths=...``, ``sepkit export --lengths``): one graph per
length, and the artefact records the lengths it supports.

Artefact metadata (``sepkit.json`` in a ``.pt2`` archive, the ``sepkit`` metadata
property of an ``.onnx`` model): model name, config, sample rate, ``n_src``, framing
and, for declared lengths, ``lengths``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sepkit import __version__
from sepkit.checkpoint import CheckpointError, load_model, model_metadata
from sepkit.fileio import atomic_output, write_text_atomic

EXPORT_FORMAT = "sepkit-export/1"
SUFFIXES = (".onnx", ".pt2")
_DYNAMIC_KEY = "dynamic"
MIN_GRID_INDEX = 2
_PROBED_UP_TO = 8
_LONG_PROBES = (13, 29, 64)
_PROBE_TOLERANCE = 1e-5  # relative to the output's peak; float32 reordering stays far below


class ExportError(ValueError):
    """A model cannot be exported as asked, or an artefact cannot be read; one line."""


class _Core(nn.Module):
    """``separate_padded`` as a module's forward: ``[batch, P] -> [batch, n_src, P]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.separate_padded(wav)


def framing_of(model: nn.Module) -> dict[str, Any]:
    """The length arithmetic of ``model`` the runner repeats around the graph."""
    return {
        "framing": str(model.framing),
        "kernel_size": int(model.encoder.kernel_size),
        "stride": int(model.encoder.stride),
        "length_multiple": int(model.length_multiple),
        # SuDoRM-RF normalises the unpadded mixture in its forward, outside the core.
        "normalize_input": bool(getattr(model, "normalize_input", False)),
    }


def length_grid(framing: dict[str, Any]) -> tuple[int, int]:
    """``(base, step)``: the graph lengths are ``base + step * k``, ``k >= 0``."""
    kind, kernel, stride, multiple = (framing[k] for k in ("framing", "kernel_size", "stride", "length_multiple"))
    if kind == "centered":
        return multiple, multiple
    if kind == "hop_padded":
        return stride, 2 * stride
    step = stride * multiple // math.gcd(stride, multiple)
    base = kernel + (-kernel) % stride  # == kernel
    while base % multiple:
        base += stride
    return base, step


def graph_length(framing: dict[str, Any], length: int) -> int:
    """The length ``P`` the graph runs on for a ``length``-sample input; equals
    ``EncoderMaskerDecoder.padded_length`` (``"truncate"``: the framed length)."""
    kind, kernel, stride = framing["framing"], framing["kernel_size"], framing["stride"]
    if kind == "truncate" and length >= kernel:
        return length - (length - kernel) % stride
    if kind == "hop_padded":
        return length + kernel - (stride + length % kernel) % kernel
    base, step = length_grid(framing)
    return base + step * math.ceil(max(0, length - base) / step)


def _graph_input(framing: dict[str, Any], wav: torch.Tensor) -> torch.Tensor:
    length = wav.shape[-1]
    target = graph_length(framing, length)
    return wav[..., :target] if target <= length else F.pad(wav, (0, target - length))


def _restore_length(framing: dict[str, Any], est: torch.Tensor, length: int) -> torch.Tensor:
    # "truncate" fills the dropped tail with zeros; the other framings crop their padding.
    return F.pad(est, (0, length - est.shape[-1])) if est.shape[-1] < length else est[..., :length]


def _export_program(core: _Core, framing: dict[str, Any], length: int | None) -> torch.export.ExportedProgram:
    """One program, dynamic in the batch; in the grid index when ``length`` is None, else
    at that input length's graph length."""
    base, step = length_grid(framing)
    batch = torch.export.Dim("batch", min=1, max=1024)
    if length is not None:
        example = torch.zeros(2, graph_length(framing, length))
        return torch.export.export(core, (example,), dynamic_shapes=({0: batch},), strict=False)
    example = torch.zeros(2, base + (_PROBED_UP_TO + 2) * step)
    grid_index = torch.export.Dim("grid_index", min=MIN_GRID_INDEX, max=2**24)
    shapes = ({0: batch, 1: base + step * grid_index},)
    return torch.export.export(core, (example,), dynamic_shapes=shapes, strict=False)


def export_programs(
    model: nn.Module, lengths: Sequence[int] | None = None
) -> tuple[dict[str, torch.export.ExportedProgram], int | None]:
    """``({"dynamic": program}, k_min)`` (the program runs from grid index ``k_min``) or
    ``({"length_<n>": program, ...}, None)`` for declared lengths.

    Raises:
        ExportError: no dynamic length possible (names the model and asks for lengths).
    """
    core = _Core(model.eval())
    framing = framing_of(model)
    if lengths:
        bad = [n for n in lengths if n < 1]
        if bad:
            raise ExportError(f"export lengths must be positive sample counts, got {bad}")
        return {f"length_{n}": _export_program(core, framing, n) for n in sorted(set(lengths))}, None
    message = (
        f"{model.model_name}: cannot be exported with a dynamic length (see its docstring); "
        "export at declared lengths (--lengths N [N ...])"
    )
    try:
        program = _export_program(core, framing, None)
    except Exception as err:  # torch reports specialisation as several error types
        if "specializ" not in str(err) and "Guard" not in str(err) and "Constraints violated" not in str(err):
            raise
        raise ExportError(message) from None
    # Export can specialise a length-dependent size silently (an nn.LSTM's sequence
    # length under a derived Dim), or keep a guard or a size assumption that breaks on a
    # short input; the program then fails its guards there or differs from eager. So
    # the program is checked against the eager core: on the short grid lengths, where
    # the artefact takes inputs from the first after which every check passes, and on
    # a few longer ones, which must all pass.
    base, step = length_grid(framing)
    short = range(MIN_GRID_INDEX, _PROBED_UP_TO + 1)
    passes = [_matches_eager(program, core, base + k * step) for k in (*short, *_LONG_PROBES)]
    if not all(passes[len(short) - 1 :]):
        raise ExportError(message)
    short_passes = passes[: len(short)]
    first_passing_run = len(short_passes) - short_passes[::-1].index(False) if False in short_passes else 0
    return {_DYNAMIC_KEY: program}, short[first_passing_run]


def _matches_eager(program: torch.export.ExportedProgram, core: _Core, graph_len: int) -> bool:
    """Whether ``program`` runs at ``graph_len`` and gives the eager core's output there."""
    wav = torch.randn(2, graph_len, generator=torch.Generator().manual_seed(graph_len))
    with torch.no_grad():
        try:
            exported = program.module()(wav)
        except AssertionError as err:  # a runtime guard of the program
            if "Guard failed" not in str(err):
                raise
            return False
        eager = core(wav)
    scale = float(eager.abs().max()) + 1e-12
    return exported.shape == eager.shape and float((exported - eager).abs().max()) <= _PROBE_TOLERANCE * scale


def _metadata(model: nn.Module, lengths: Sequence[int] | None, min_grid_index: int | None) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "sepkit_version": __version__,
        "torch_version": torch.__version__,
        **model_metadata(model),
        **framing_of(model),
        "lengths": sorted(set(lengths)) if lengths else None,
        "min_grid_index": min_grid_index,
    }


def export_model(model: nn.Module, out: str | Path, lengths: Sequence[int] | None = None) -> Path:
    """Write ``model`` to ``out`` (``.onnx`` or ``.pt2``, atomically).

    ``.onnx`` with several declared lengths writes one file per length,
    ``<stem>.<n>.onnx`` (an ONNX model has one graph); the return value is ``out`` or
    the first of them.
    """
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ExportError(f"{out}: unknown export format {out.suffix!r}; use .onnx or .pt2")
    programs, min_grid_index = export_programs(model, lengths)
    meta = _metadata(model, lengths, min_grid_index)
    if out.suffix == ".pt2":
        from torch.export.pt2_archive._package import package_pt2  # the multi-program archive writer

        buffer = io.BytesIO()  # the archive writer wants a .pt2 name or a buffer, not our temp name
        package_pt2(buffer, exported_programs=programs, extra_files={"sepkit.json": json.dumps(meta)})
        with atomic_output(out) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return out
    import onnx

    written = []
    for key, program in programs.items():
        if len(programs) == 1:
            target, record = out, meta
        else:
            target = out.with_name(f"{out.stem}.{key.removeprefix('length_')}{out.suffix}")
            record = {**meta, "lengths": [int(key.removeprefix("length_"))]}
        proto = torch.onnx.export(program, dynamo=True, verbose=False).model_proto
        onnx.helper.set_model_props(proto, {"sepkit": json.dumps(record)})
        with atomic_output(target) as tmp:
            onnx.save_model(proto, str(tmp))
        written.append(target)
    return written[0]


class ExportedSeparator:
    """A loaded artefact, called like the eager model: ``[batch, time]`` ->
    ``[batch, n_src, time]`` (float32, CPU)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: exported model not found")
        if self.path.suffix == ".pt2":
            from torch.export.pt2_archive._package import load_pt2

            try:
                contents = load_pt2(self.path)
                meta = json.loads(contents.extra_files["sepkit.json"])
            except Exception as err:
                raise ExportError(f"{self.path}: not a sepkit .pt2 export ({type(err).__name__})") from None
            self._programs = {key: program.module() for key, program in contents.exported_programs.items()}
        elif self.path.suffix == ".onnx":
            import onnxruntime

            try:
                self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
                meta = json.loads(self._session.get_modelmeta().custom_metadata_map["sepkit"])
            except Exception as err:
                raise ExportError(f"{self.path}: not a sepkit .onnx export ({type(err).__name__})") from None
        else:
            raise ExportError(f"{self.path}: unknown export format {self.path.suffix!r}; use .onnx or .pt2")
        if meta.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{self.path}: unsupported export format {meta.get('format')!r}")
        self.metadata: dict[str, Any] = meta
        self.lengths: list[int] | None = meta["lengths"]
        self.sample_rate: int = int(meta["sample_rate"])
        self.n_src: int = int(meta["n_src"])
        base, step = length_grid(meta)
        smallest_graph = base + (meta["min_grid_index"] or 0) * step
        #: the shortest input a dynamic artefact takes (its graph length is on the dynamic range)
        self.shortest: int = next(n for n in range(1, smallest_graph + 1) if graph_length(meta, n) >= smallest_graph)

    def _check_length(self, length: int) -> None:
        if self.lengths is None:
            if length < self.shortest:
                raise ExportError(
                    f"{self.path}: an input of {length} samples is shorter than the exported graph's minimum "
                    f"of {self.shortest} samples"
                )
            return
        graphs = {graph_length(self.metadata, n) for n in self.lengths}
        if graph_length(self.metadata, length) not in graphs:
            raise ExportError(
                f"{self.path}: exported at declared lengths {self.lengths}; an input of {length} samples "
                "is not on one of their grids"
            )

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, n_src, time]``."""
        if wav.dim() != 2:
            raise ExportError(f"{self.path}: expected [batch, time] input, got {tuple(wav.shape)}")
        length = wav.shape[-1]
        self._check_length(length)
        wav = wav.detach().to("cpu", torch.float32)
        if self.metadata["normalize_input"]:
            # As SuDoRM-RF's forward: statistics of the unpadded mixture, unbiased std
            # (population std for one sample), the mean shared out over the sources.
            mean = wav.mean(dim=-1, keepdim=True)
            scale = wav.std(dim=-1, keepdim=True, correction=1 if length > 1 else 0) + 1e-8
            wav = (wav - mean) / scale
        graph_in = _graph_input(self.metadata, wav)
        if self.path.suffix == ".pt2":
            key = _DYNAMIC_KEY if self.lengths is None else self._program_key(graph_in.shape[-1])
            with torch.no_grad():
                est = self._programs[key](graph_in)
        else:
            (out,) = self._session.run(None, {self._session.get_inputs()[0].name: graph_in.numpy()})
            est = torch.from_numpy(np.asarray(out))
        est = _restore_length(self.metadata, est, length)
        if self.metadata["normalize_input"]:
            est = est * scale.reshape(-1, 1, 1) + mean.reshape(-1, 1, 1) / self.n_src
        return est

    def _program_key(self, graph_len: int) -> str:
        return next(f"length_{n}" for n in self.lengths or [] if graph_length(self.metadata, n) == graph_len)


def _checkpoint_payload(path: Path) -> dict[str, Any]:
    """The checkpoint's dict (weights-only load) when ``path`` is a sepkit file, else ``{}``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a folder, a published model or anything torch cannot read: no training record
        return {}
    return payload if isinstance(payload, dict) and isinstance(payload.get("sepkit"), dict) else {}


def _evaluation_summary(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The first ``summary.json`` of ``sepkit evaluate`` beside the run: in the
    checkpoint's folder, its parent (the run folder), or one level below either."""
    for folder in (path.parent, path.parent.parent):
        for candidate in [folder / "summary.json", *sorted(folder.glob("*/summary.json"))]:
            if candidate.is_file():
                try:
                    summary = json.loads(candidate.read_text())
                except (OSError, ValueError) as err:
                    raise ExportError(f"{candidate}: unreadable evaluation summary ({err})") from None
                if isinstance(summary, dict):
                    return candidate, summary
    return None


def model_card(source: str | Path) -> str:
    """A Markdown model card of a checkpoint: config, training data (if the checkpoint
    records its datamodule), evaluation metrics (a ``summary.json`` beside the run),
    versions and the BibTeX of the model's paper (:mod:`sepkit.models.citations`)."""
    from sepkit.hub import resolve_model_source
    from sepkit.models.citations import citation

    model = load_model(source)
    meta = model_metadata(model)
    resolved = resolve_model_source(source)
    payload = _checkpoint_payload(resolved) if resolved.is_file() else {}
    n_params = sum(param.numel() for param in model.parameters())
    lines = [
        f"# {meta['model_name']}: {Path(str(source)).name}",
        "",
        f"- model: `{meta['model_name']}`, {n_params:,} parameters",
        f"- sample rate: {meta['sample_rate']} Hz; sources: {meta['n_src']}",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(meta["model_config"], indent=2, sort_keys=True),
        "```",
        "",
        "## Training data",
        "",
    ]
    data = payload.get("datamodule_hyper_parameters")
    if isinstance(data, dict) and data:
        lines += ["```json", json.dumps(data, indent=2, sort_keys=True, default=str), "```"]
    else:
        lines.append("Not recorded in the checkpoint.")
    lines += ["", "## Evaluation", ""]
    found = _evaluation_summary(resolved) if resolved.is_file() else None
    if found is None:
        lines.append("No `summary.json` of `sepkit evaluate` found beside the run.")
    else:
        summary_path, summary = found
        lines.append(f"From `{summary_path}`:")
        lines.append("")
        lines += [f"- {key}: {value}" for key, value in summary.items() if isinstance(value, (int, float, str))]
        # Per metric: the separated value and the improvement over the mixture, with the
        # bootstrap 95% CI sepkit evaluate computed.
        for name, parts in (summary.get("metrics") or {}).items():
            for part in ("separated", "improvement"):
                stats = (parts or {}).get(part) or {}
                if stats.get("mean") is not None:
                    lines.append(
                        f"- {name} {part}: {stats['mean']:.2f} "
                        f"(95% CI {stats['ci_low']:.2f} to {stats['ci_high']:.2f}, n={stats['n']})"
                    )
    trained_with = payload.get("sepkit", {}).get("version")
    lines += [
        "",
        "## Versions",
        "",
        f"- written by sepkit {trained_with}"
        if trained_with
        else "- not written by sepkit (a converted published model)",
        f"- card by sepkit {__version__}, torch {torch.__version__}",
    ]
    if payload.get("pytorch-lightning_version"):
        lines.append(f"- trained with Lightning {payload['pytorch-lightning_version']}")
    bibtex = citation(meta["model_name"])
    if meta["model_config"].get("ssc"):
        bibtex = "\n\n".join(filter(None, (bibtex, citation("ssc"))))
    lines += ["", "## Citation", "", "```bibtex", bibtex, "```", ""]
    return "\n".join(lines)


def write_model_card(source: str | Path, out: str | Path) -> None:
    """Write :func:`model_card` of ``source`` to ``out`` atomically."""
    out = Path(out)
    if is_same_file(source, out):
        raise ExportError(f"{out}: the model card would overwrite the input checkpoint")
    write_text_atomic(out, model_card(source))


def is_same_file(source: str | Path, out: Path) -> bool:
    """Whether writing ``out`` would replace ``source`` (an hf:// id never is a local file)."""
    return out.exists() and Path(str(source)).exists() and Path(str(source)).resolve() == out.resolve()


def export_main(argv: list[str]) -> int:
    """``sepkit export CKPT OUT.onnx|OUT.pt2 [--lengths N ...]`` and ``sepkit export --card CKPT OUT.md``."""
    parser = argparse.ArgumentParser(prog="sepkit export", description=export_main.__doc__)
    parser.add_argument("checkpoint", help="sepkit checkpoint, model file, published model or hf://owner/name")
    parser.add_argument("out", type=Path, help="OUT.onnx or OUT.pt2 (with --card: OUT.md)")
    parser.add_argument("--lengths", type=int, nargs="+", help="declared input lengths (samples)")
    parser.add_argument("--card", action="store_true", help="write a Markdown model card of CKPT instead")
    args = parser.parse_args(argv)
    try:
        if args.card:
            write_model_card(args.checkpoint, args.out)
            print(f"wrote {args.out}")
            return 0
        if is_same_file(args.checkpoint, args.out):
            raise ExportError(f"{args.out}: the output would overwrite the input checkpoint")
        model = load_model(args.checkpoint)
        written = export_model(model, args.out, args.lengths)
    except (CheckpointError, ExportError) as err:
        print(f"sepkit export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
