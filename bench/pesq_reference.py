"""PESQ through sepkit.metrics against the reference values of the pesq package's own tests.

The ``pesq`` package (github.com/ludlows/PESQ) tests itself on two recordings of its
repository, ``audio/speech.wav`` (the reference) and ``audio/speech_bab_0dB.wav`` (the
same speech in babble noise at 0 dB SNR), both 16 kHz, and expects exactly

- wide-band (P.862.2 MOS-LQO): 1.0832337141036987
- narrow-band (P.862 raw MOS): 1.6072081327438354

(``tests/test_pesq.py``, function ``test``). The recordings are third-party data that is
not on PyPI, so sepkit does not ship them; this script reads them from a checkout of that
repository (or from a bare clone of it, through ``git show``), scores them with
:func:`sepkit.metrics.score_utterance` (the recordings read by :func:`sepkit.audio.read_audio`,
as ``sepkit score`` reads files), and compares.

Run: ``PYTHONPATH=. python bench/pesq_reference.py PATH`` where PATH is a checkout (a
folder with ``audio/speech.wav``) or a bare git repository of ludlows/PESQ.
Writes ``bench/results/pesq_reference.json``; the exit status is 1 when a score differs
from the published value by more than ``--tolerance`` (default 1e-6).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepkit.audio import read_audio  # noqa: E402
from sepkit.fileio import write_text_atomic  # noqa: E402
from sepkit.metrics import score_utterance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pesq_reference.json"
REFERENCE_FILE, DEGRADED_FILE = "audio/speech.wav", "audio/speech_bab_0dB.wav"
# The pesq package's tests/test_pesq.py::test asserts these exact values.
PUBLISHED = {"pesq_wb": 1.0832337141036987, "pesq_nb": 1.6072081327438354}


def git_commit(repository: Path) -> str | None:
    """HEAD of the repository at ``repository`` (checkout or bare), or ``None`` if it is none."""
    result = subprocess.run(
        ["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def recordings(repository: Path, scratch: Path) -> tuple[Path, Path]:
    """Paths of the two recordings: in the checkout, or copied out of a bare repository into ``scratch``."""
    if (repository / REFERENCE_FILE).is_file():
        return repository / REFERENCE_FILE, repository / DEGRADED_FILE
    paths = []
    for name in (REFERENCE_FILE, DEGRADED_FILE):
        blob = subprocess.run(["git", "-C", str(repository), "show", f"HEAD:{name}"], capture_output=True, check=False)
        if blob.returncode != 0:
            raise SystemExit(
                f"{repository}: neither a checkout with {name} nor a git repository holding it "
                f"({blob.stderr.decode(errors='replace').strip()})"
            )
        path = scratch / Path(name).name
        path.write_bytes(blob.stdout)
        paths.append(path)
    return paths[0], paths[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="checkout or bare clone of github.com/ludlows/PESQ")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest accepted |sepkit - published|")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        reference_path, degraded_path = recordings(args.repository, Path(scratch))
        reference, rate = read_audio(reference_path)
        degraded, degraded_rate = read_audio(degraded_path)
        if degraded_rate != rate or len(degraded) != len(reference):
            raise SystemExit(
                f"{degraded_path}: {degraded_rate} Hz, {len(degraded)} samples; the reference has "
                f"{rate} Hz, {len(reference)} samples"
            )
    # One source: the degraded recording is the "estimate" of the clean one; no mixture.
    scores = score_utterance(degraded[None], reference[None], None, rate, tuple(PUBLISHED))
    comparison = {}
    for metric, published in PUBLISHED.items():
        ours = scores.values[metric]
        difference = None if ours is None else abs(ours - published)
        comparison[metric] = {
            "sepkit": ours,
            "published": published,
            "abs_difference": difference,
            "within_tolerance": difference is not None and difference <= args.tolerance,
            "flag": scores.flags.get(metric, ""),
        }
    result = {
        "command": "PYTHONPATH=. python bench/pesq_reference.py " + " ".join(sys.argv[1:]),
        "source": "github.com/ludlows/PESQ tests/test_pesq.py::test",
        "repository_commit": git_commit(args.repository),
        "recordings": {
            "reference": REFERENCE_FILE,
            "degraded": DEGRADED_FILE,
            "sample_rate": rate,
            "samples": len(reference),
        },
        "tolerance": args.tolerance,
        "metrics": comparison,
        "pesq": version("pesq"),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    for metric, entry in comparison.items():
        print(
            f"{metric}: sepkit {entry['sepkit']!r}, published {entry['published']!r}, "
            f"|difference| {entry['abs_difference']!r}"
        )
    passed = all(entry["within_tolerance"] for entry in comparison.values())
    print(f"{'agrees' if passed else 'DIFFERS'} within {args.tolerance:g}; written {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
