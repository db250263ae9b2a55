"""``sepkit prepare``: build mixture tables from the corpora on disk and optionally
write the official folder layouts.

Sub-commands: ``wsj0-mix``, ``librimix``, ``wham``, ``whamr``, ``folder``, ``verify``.
By default only the mixture tables are written (``--metadata-only``): training renders
the mixtures on the fly from them. ``--write`` also writes every file of the official
layout with the same renderer. Both record what they built in
``<out>/prepare_manifest.json``, which ``sepkit prepare verify <out>`` checks.

The ``sepkit`` command reaches :func:`main` through the ``sepkit.commands`` entry-point
group declared in pyproject.toml: corpus recipes are the outermost layer, so they may
import sepkit but sepkit never imports them (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.common import (
    PrepareError,
    RowHook,
    SplitPlan,
    claim_output,
    download_pinned,
    ensure_outside,
    execute,
    human_bytes,
    require_dir,
    run_parameters,
    update_manifest,
)
from sepkit.data.mixtures import MixtureSpec, render_outputs
from sepkit.data.paths import MANIFEST, read_checked_table

_TRUST_HELP = "accept downloaded metadata whose checksum is not pinned yet (prints the sha256 to pin)"
_RIR_HELP = "pra031: exact port of pyroomacoustics 0.3.1 (official WHAMR!); pyroomacoustics: the installed version"
_REVERB_TARGETS_HELP = "sep_reverb/sep_noisy_reverb tables target the reverberant sources (no dereverberation)"


def _common(parser: argparse.ArgumentParser, rates: list[int], modes: list[str]) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (never inside an input corpus)")
    parser.add_argument(
        "--sample-rate",
        type=int,
        nargs="+",
        default=rates,
        dest="sample_rates",
        help=f"output rates (default {' '.join(map(str, rates))}; the official scripts make 8000 and 16000)",
    )
    parser.add_argument(
        "--mode",
        nargs="+",
        choices=["min", "max"],
        default=modes,
        dest="modes",
        help=f"length modes (default {' '.join(modes)}, the usual benchmark; official scripts make both)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write every file of the official layout")
    group.add_argument("--metadata-only", action="store_true", help="only the mixture tables (default)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--dry-run", action="store_true", help="plan and estimate, write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild split folders of --out prepared with other parameters (their old audio files are removed)",
    )


def _metadata(args: argparse.Namespace, given: Path | None, pinned, label: str) -> Path:
    if given is not None:
        return require_dir(given, f"{label} metadata", "--lists/--metadata")
    return download_pinned(pinned, args.out / "metadata" / label, trust_unpinned=args.trust_unpinned_download)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sepkit prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("wsj0-mix", help="wsj0-2mix / wsj0-3mix (MERL)")
    p.add_argument("--wsj0", type=Path, required=True, help="WSJ0 as a WAV tree or the original discs (.wv1)")
    p.add_argument("--lists", type=Path, help="folder with mix_{N}_spk_{tr,cv,tt}.txt and activlev_*.txt")
    p.add_argument("--n-src", type=int, nargs="+", default=[2], dest="n_srcs")
    p.add_argument("--splits", nargs="+", default=["tr", "cv", "tt"])
    p.add_argument("--trust-unpinned-download", action="store_true", help=_TRUST_HELP)
    p.add_argument(
        "--no-official-extras",
        action="store_true",
        help="with --write, skip MERL's scaling.mat (recorded while writing; a resumed run renders the rows already complete again for it)",
    )
    _common(p, [8000], ["min"])

    p = sub.add_parser("librimix", help="Libri2Mix / Libri3Mix")
    p.add_argument("--librispeech", type=Path, required=True, help="folder holding train-clean-100/, dev-clean/, ...")
    p.add_argument("--wham-noise", type=Path, help="wham_noise folder (needed for mix_both / mix_single)")
    p.add_argument("--metadata", type=Path, help="LibriMix metadata folder (Libri{N}Mix/libri{N}mix_<subset>.csv)")
    p.add_argument("--n-src", type=int, nargs="+", default=[2], dest="n_srcs")
    p.add_argument(
        "--types",
        nargs="+",
        choices=["mix_clean", "mix_both", "mix_single"],
        default=["mix_clean"],
        help="mixture types (default mix_clean, which needs no WHAM! noise)",
    )
    p.add_argument("--subsets", nargs="+", help="train-360 train-100 dev test (default: those with metadata)")
    p.add_argument(
        "--quantizer",
        choices=["round", "libsndfile"],
        default="libsndfile",
        help="int16 rounding: as LibriMix's own script writes it through libsndfile 1.2.2, in effect floor(32768 x) "
        "(default), or round(32768 x)",
    )
    p.add_argument("--trust-unpinned-download", action="store_true", help=_TRUST_HELP)
    p.add_argument(
        "--no-official-extras",
        action="store_true",
        help="with --write, skip LibriMix's metrics_*.csv (computed while writing; a resumed run reads the files already complete back for it)",
    )
    _common(p, [8000], ["min"])

    for name, extra in (("wham", False), ("whamr", True)):
        p = sub.add_parser(name, help="WHAMR!" if extra else "WHAM!")
        p.add_argument("--wsj0", type=Path, required=True)
        p.add_argument("--wham-noise", type=Path, required=True, help="wham_noise folder with metadata/scaling_*.npz")
        p.add_argument("--lists", type=Path, required=True, help="mix_2_spk_filenames_{split}.csv or MERL lists")
        p.add_argument("--splits", nargs="+", default=["tr", "cv", "tt"])
        if extra:
            p.add_argument("--reverb-params", type=Path, required=True, help="folder with reverb_params_{split}.csv")
            p.add_argument("--absorption-law", choices=["legacy", "sabine"], default="legacy")
            p.add_argument("--rir-engine", choices=["pra031", "pyroomacoustics"], default="pra031", help=_RIR_HELP)
            p.add_argument("--reverberant-targets", action="store_true", help=_REVERB_TARGETS_HELP)
        _common(p, [8000], ["min"])

    p = sub.add_parser("folder", help="mixtures from any folder of utterances (one sub-folder per speaker)")
    p.add_argument("--sources", type=Path, required=True)
    p.add_argument("--n-src", type=int, default=2)
    p.add_argument("--splits", nargs="+", default=["train", "valid", "test"])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.8, 0.1, 0.1])
    p.add_argument("--n-mixtures", type=int, nargs="+", default=[1000, 100, 100])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--speakers",
        nargs="+",
        default=[],
        metavar="SPLIT=NAMES",
        help="speakers of a split by folder name, e.g. train=spk01,spk02 test=spk09 (unnamed splits share the "
        "other speakers by --fractions)",
    )
    p.add_argument("--speakers-file", type=Path, help="file of '<split> <speaker>' lines, as --speakers")
    _common(p, [8000], ["min"])

    p = sub.add_parser("verify", help="check a prepared folder (counts, lengths, durations, official files)")
    p.add_argument("directory", type=Path)
    p.add_argument("--official", type=Path, help="root of official files with the same layout, to compare against")
    p.add_argument("--samples", type=int, default=5, help="rows per split compared / rendered")
    return parser


def _plans(args: argparse.Namespace) -> list[SplitPlan]:
    if args.command == "wsj0-mix":
        from data_prep import wsj0mix

        require_dir(args.wsj0, "WSJ0", "--wsj0")
        ensure_outside(args.out, {"--wsj0": args.wsj0, "--lists": args.lists})
        lists = _metadata(args, args.lists, wsj0mix.pinned_lists(args.n_srcs), "pywsj0-mix")
        return wsj0mix.build_plans(
            args.wsj0,
            lists,
            args.out,
            args.n_srcs,
            args.sample_rates,
            args.modes,
            args.splits,
            args.jobs,
            args.dry_run,
            progress=not args.no_progress,
        )
    if args.command == "librimix":
        from data_prep import librimix

        require_dir(args.librispeech, "LibriSpeech", "--librispeech")
        if args.wham_noise is not None:
            require_dir(args.wham_noise, "WHAM! noise", "--wham-noise")
        ensure_outside(
            args.out, {"--librispeech": args.librispeech, "--wham-noise": args.wham_noise, "--metadata": args.metadata}
        )
        meta = _metadata(args, args.metadata, librimix.pinned_metadata(args.n_srcs), "LibriMix")
        return librimix.build_plans(
            args.librispeech,
            args.wham_noise,
            meta,
            args.out,
            args.n_srcs,
            args.sample_rates,
            args.modes,
            args.types,
            args.subsets,
            args.dry_run,
            args.quantizer,
            progress=not args.no_progress,
        )
    if args.command in ("wham", "whamr"):
        require_dir(args.wsj0, "WSJ0", "--wsj0")
        require_dir(args.wham_noise, "WHAM! noise", "--wham-noise")
        require_dir(args.lists, "speaker lists", "--lists")
        inputs = {"--wsj0": args.wsj0, "--wham-noise": args.wham_noise, "--lists": args.lists}
        if args.command == "wham":
            from data_prep import wham

            ensure_outside(args.out, inputs)
            return wham.build_plans(
                args.wsj0,
                args.wham_noise,
                args.lists,
                args.out,
                args.sample_rates,
                args.modes,
                args.splits,
                jobs=args.jobs,
                dry_run=args.dry_run,
            )
        from data_prep import whamr

        require_dir(args.reverb_params, "WHAMR! room parameters", "--reverb-params")
        ensure_outside(args.out, {**inputs, "--reverb-params": args.reverb_params})
        report: list = []
        plans = whamr.build_plans(
            args.wsj0,
            args.wham_noise,
            args.lists,
            args.reverb_params,
            args.out,
            args.sample_rates,
            args.modes,
            args.splits,
            absorption_law=args.absorption_law,
            rir_engine=args.rir_engine,
            reverberant_targets=args.reverberant_targets,
            jobs=args.jobs,
            dry_run=args.dry_run,
            t60_report=report,
            progress=not args.no_progress,
        )
        if report:
            errors = [abs(measured - expected) / expected for _, _, expected, measured in report]
            print(
                f"WHAMR! rooms simulated: {len(report)}; achieved T60 vs Sabine prediction: "
                f"mean relative error {100 * float(np.mean(errors)):.1f}%, worst {100 * float(np.max(errors)):.1f}%"
            )
        return plans
    if args.command == "folder":
        from data_prep import folder

        require_dir(args.sources, "utterance folder", "--sources")
        ensure_outside(args.out, {"--sources": args.sources})
        return folder.build_plans(
            args.sources,
            args.out,
            args.n_src,
            args.sample_rates,
            args.modes,
            args.splits,
            args.fractions,
            args.n_mixtures,
            args.seed,
            progress=not args.no_progress,
            named_speakers=folder.parse_speaker_option(args.speakers),
        )
    raise AssertionError(args.command)


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = float(np.sum((reference - estimate) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference**2)) / noise)


def as_written(rendered: np.ndarray, spec: MixtureSpec) -> np.ndarray:
    """``rendered [time]`` (float64, from :func:`render_outputs`) as it reads back from the
    file ``--write`` makes of it: quantised rows are already on the int16 grid; the others
    are stored as 32-bit float, so they are compared after the same rounding to float32
    (the official WHAM!/WHAMR! files are float32 too)."""
    return rendered if spec.quantize else rendered.astype(np.float32).astype(np.float64)


def verify(directory: Path, official: Path | None, samples: int) -> int:
    """Check every split recorded in ``directory``'s manifest; returns the number of problems."""
    path = directory / MANIFEST
    if not path.is_file():
        raise PrepareError(f"{path} not found: run a prepare command with --out {directory} first")
    manifest = json.loads(path.read_text())
    problems = 0
    for rel, entry in sorted(manifest["splits"].items()):
        split_dir = directory / rel
        try:
            specs = read_checked_table(directory / entry["tables"][0])
        except ValueError as err:  # a malformed or unsafe row: one line, not a traceback
            raise PrepareError(str(err)) from None
        hours = sum(s.length / s.sample_rate for s in specs) / 3600
        lengths = [s.length for s in specs]
        line = f"{entry['name']}: {len(specs)} mixtures, {hours:.3f} h, length {min(lengths, default=0)}..{max(lengths, default=0)}"
        if len(specs) != entry["mixtures"]:
            problems += 1
            line += f"; table has {len(specs)} rows, manifest says {entry['mixtures']}"
        if entry["written"]:
            by_id = {s.mixture_id: s for s in specs}
            for sub in entry["folders"].values():
                files = sorted((split_dir / sub).glob("*.wav"))
                bad = 0
                for f in files:
                    spec = by_id.get(f.stem)
                    info = sf.info(str(f))
                    if spec is None or info.frames != spec.length or info.samplerate != spec.sample_rate:
                        bad += 1
                if len(files) != len(specs) or bad:
                    problems += 1
                    line += f"; {sub}: {len(files)}/{len(specs)} files, {bad} with wrong length or rate"
        else:
            for spec in specs[:samples]:
                out = render_outputs(spec, None, [spec.mixture_name])
                if len(out[spec.mixture_name]) != spec.length:
                    problems += 1
                    line += f"; {spec.mixture_id} renders to the wrong length"
        print(line)
        if official is not None:
            snrs, equal = [], 0
            compared = 0
            for spec in specs[:samples]:
                ours = render_outputs(spec, None, list(entry["folders"]))
                for name, sub in entry["folders"].items():
                    ref_path = official / rel / sub / f"{spec.mixture_id}.wav"
                    if not ref_path.is_file():
                        continue
                    reference, _ = sf.read(str(ref_path), dtype="float64", always_2d=True)
                    reference = reference[:, 0]
                    mine = as_written(ours[name], spec)
                    n = min(len(reference), len(mine))
                    if len(reference) != len(mine):
                        problems += 1
                        print(f"  {ref_path}: official length {len(reference)}, ours {len(mine)}")
                    snrs.append(_snr_db(reference[:n], mine[:n]))
                    equal += int(np.array_equal(reference[:n], mine[:n]))
                    compared += 1
            if compared:
                finite = [s for s in snrs if np.isfinite(s)]
                worst = min(finite) if finite else float("inf")
                print(f"  vs official: {compared} files, {equal} identical, worst SNR {worst:.1f} dB")
            else:
                print(f"  vs official: no matching files under {official / rel}")
    print("verify: OK" if problems == 0 else f"verify: {problems} problem(s)")
    return problems


def _side_file_hook(args: argparse.Namespace) -> RowHook | None:
    """What the writing pass records per row for the official side files (LibriMix's
    metrics CSVs, wsj0-mix's scaling.mat), so they need no second pass over the rows."""
    if not args.write or getattr(args, "no_official_extras", False):
        return None
    if args.command == "librimix":
        from data_prep.librimix import row_metrics

        return functools.partial(row_metrics, types=tuple(args.types))
    if args.command == "wsj0-mix":
        from data_prep.wsj0mix import row_peak

        return row_peak
    return None


def main(argv: list[str] | None = None) -> int:
    """Build WSJ0-2mix/3mix, LibriMix, WHAM!, WHAMR! or your own corpus.

    ``sepkit prepare``: ``argv`` holds the arguments after the command name; returns the
    exit status. The first docstring line is the summary ``sepkit --help`` shows.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            return 1 if verify(args.directory, args.official, args.samples) else 0
        # paths from the command line: absolute, so tables work from any folder
        for name, value in vars(args).items():
            if isinstance(value, Path):
                setattr(args, name, value.absolute())
        if getattr(args, "speakers_file", None) is not None:
            # The file's content, not its path, is a parameter of the run: a changed list
            # must not reuse tables drawn from the old one.
            from data_prep.folder import read_speaker_file

            listed = read_speaker_file(args.speakers_file)
            args.speakers = [*args.speakers, *(f"{split}={','.join(names)}" for split, names in listed.items())]
            args.speakers_file = None
        parameters = run_parameters(vars(args))
        plans = _plans(args)
        claim_output(args.out, plans, parameters, args.force, args.dry_run)
        summary = execute(
            plans,
            args.write,
            args.jobs,
            dry_run=args.dry_run,
            progress=not args.no_progress,
            force=args.force,
            row_hook=_side_file_hook(args),
            checked=True,  # claim_output validated these plans
        )
        if args.command == "librimix" and args.write and not args.dry_run:
            from data_prep.librimix import write_official_csvs

            write_official_csvs(
                plans,
                args.types,
                metrics=not args.no_official_extras,
                progress=not args.no_progress,
                computed=summary["row_values"],
            )
        if args.command == "wsj0-mix" and args.write and not args.dry_run and not args.no_official_extras:
            from data_prep.wsj0mix import write_scaling_mat

            write_scaling_mat(plans, jobs=args.jobs, progress=not args.no_progress, peaks=summary["row_values"])
        if not args.dry_run:
            update_manifest(args.out, plans, args.write, parameters)
    except PrepareError as err:
        print(f"sepkit prepare {args.command}: error: {err}", file=sys.stderr)
        return 2
    estimate = summary["estimated_bytes"]
    print(f"{summary['mixtures']} mixtures in {len(plans)} split folder(s)")
    if args.write:
        print(
            f"written layout size: {human_bytes(estimate)}; files written {summary['written']}, already complete {summary['skipped']}"
        )
    else:
        from data_prep.common import estimate_bytes

        print(f"metadata only (render on the fly); --write would take {human_bytes(estimate_bytes(plans))}")
    if args.dry_run:
        print("dry run: nothing written")
    else:
        print("tables:\n  " + "\n  ".join(summary["tables"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
