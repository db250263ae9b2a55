"""``sepkit evaluate``: SI-SDR and SI-SDR improvement of a checkpoint on a test split,
per utterance (CSV) and summarised (JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sepkit.data.datasets import MixtureTableDataset, SegmentedDataset, WrittenMixtureDataset
from sepkit.fileio import write_text_atomic
from sepkit.inference import separate
from sepkit.losses import pit_si_sdr, si_sdr


def evaluate_dataset(
    model: torch.nn.Module, dataset: SegmentedDataset, chunk_seconds: float | None = None, progress=None
) -> list[dict[str, float | str]]:
    """Per-utterance results: id, SI-SDR of the input mixture, of the PIT-matched
    estimates, and the improvement (dB, averaged over sources)."""
    rows = []
    task = progress.add_task("evaluating", total=len(dataset)) if progress is not None else None
    for index in range(len(dataset)):
        mixture, sources = dataset[index]
        estimate = separate(model, mixture, chunk_seconds=chunk_seconds).cpu()
        score, _ = pit_si_sdr(estimate.unsqueeze(0), sources.unsqueeze(0))
        baseline = si_sdr(mixture.expand_as(sources), sources).mean()
        rows.append(
            {
                "id": dataset.item_id(index),
                "input_si_sdr": float(baseline),
                "si_sdr": float(score[0]),
                "si_sdri": float(score[0] - baseline),
            }
        )
        if task is not None:
            progress.advance(task)
    return rows


def summarize(rows: list[dict[str, float | str]]) -> dict[str, float]:
    """Mean of each metric over utterances, plus the count."""
    summary: dict[str, float] = {"n_utterances": len(rows)}
    for key in ("input_si_sdr", "si_sdr", "si_sdri"):
        summary[key] = sum(float(r[key]) for r in rows) / max(len(rows), 1)
    return summary


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sepkit evaluate", description="SI-SDR(i) of a checkpoint on a test set.")
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="mixture-table CSV (rendered on the fly) or written split folder")
    parser.add_argument("--mixture-folder", default="mix", help="mixture folder name in a written split")
    parser.add_argument("--out-dir", default=None, help="where to write per_utterance.csv and summary.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-seconds", type=float, default=None)
    args = parser.parse_args(argv)

    from rich.progress import Progress

    from sepkit.checkpoint import load_model

    model = load_model(args.checkpoint, map_location=args.device)
    if Path(args.data).is_dir():
        dataset: SegmentedDataset = WrittenMixtureDataset(
            args.data, model.n_src, args.mixture_folder, sample_rate=model.sample_rate
        )
    else:
        dataset = MixtureTableDataset(args.data, sample_rate=model.sample_rate, n_src=model.n_src)
    with Progress() as progress:
        rows = evaluate_dataset(model, dataset, args.chunk_seconds, progress)
    summary = summarize(rows)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.checkpoint).parent / "evaluation"
    lines = [",".join(rows[0].keys())] + [
        ",".join(f"{v:.4f}" if isinstance(v, float) else v for v in r.values()) for r in rows
    ]
    write_text_atomic(out_dir / "per_utterance.csv", "\n".join(lines) + "\n")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"{summary['n_utterances']} mixtures: input SI-SDR {summary['input_si_sdr']:.2f} dB, "
        f"separated {summary['si_sdr']:.2f} dB, SI-SDR improvement {summary['si_sdri']:.2f} dB"
    )
    print(f"per-utterance results: {out_dir / 'per_utterance.csv'}; summary: {out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(evaluate_main(sys.argv[1:]))
