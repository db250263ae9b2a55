"""What the notebooks share: the cache folder, the synthetic Conv-TasNet that notebook 01
trains on first use (and 04 evaluates), and a runner for ``sepkit`` commands.

The cache lives in ``notebooks/.cache/`` (git-ignored), or wherever the environment
variable ``SEPKIT_NOTEBOOK_CACHE`` points. A trained run is stored under a key that
hashes the recipe file and every override given to ``sepkit train`` (the step budget
among them), so editing the recipe or the budget trains a new model instead of reusing a
stale one. Training happens in a private staging folder that is renamed into place only
once ``sepkit train`` has finished, so an interrupted run never leaves a half-written
checkpoint where a later run would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
REPOSITORY = NOTEBOOKS.parent
SYNTHETIC_RECIPE = REPOSITORY / "recipes" / "synthetic" / "convtasnet.yaml"
CACHE_VARIABLE = "SEPKIT_NOTEBOOK_CACHE"
# Lines of `sepkit train`'s log shown by synthetic_checkpoint: the last progress lines.
TRAIN_LOG_TAIL = 4


def cache_folder() -> Path:
    """The notebooks' cache: ``$SEPKIT_NOTEBOOK_CACHE`` or ``notebooks/.cache``."""
    folder = Path(os.environ.get(CACHE_VARIABLE) or NOTEBOOKS / ".cache").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def work_folder(name: str) -> Path:
    """An empty folder ``<cache>/work/<name>`` for one notebook's files (emptied first,
    so every run of a notebook starts from the same state)."""
    folder = cache_folder() / "work" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def sepkit(*arguments: str | Path, show: int | None = None, log: Path | None = None, echo: bool = True) -> str:
    """Run ``sepkit ARGUMENTS`` with this kernel's Python (``python -m sepkit.cli``, the same
    entry point as the ``sepkit`` command) and return its output (stdout and stderr).

    The command line is printed first (unless ``echo`` is false), then its output: all of
    it, or the last ``show`` lines (``show=0``: none). Progress-bar redraws (lines ending in a carriage return)
    are dropped. With ``log`` the full output is also written to that file.

    Raises:
        RuntimeError: the command failed; the message holds its last lines of output.
    """
    command = [str(part) for part in arguments]
    if echo:
        print(shorten("$ sepkit " + " ".join(command)))
    result = subprocess.run(
        [sys.executable, "-m", "sepkit.cli", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = [line.rsplit("\r", 1)[-1] for line in result.stdout.splitlines()]
    output = "\n".join(line for line in lines if line.strip())
    if log is not None:
        log.write_text(output + "\n")
    if result.returncode != 0:
        raise RuntimeError(f"sepkit {command[0]} exited with status {result.returncode}:\n" + "\n".join(lines[-20:]))
    shown = output.splitlines() if show is None else output.splitlines()[-show:] if show else []
    if shown:
        print(shorten("\n".join(shown)))
    return output


def shorten(text: str) -> str:
    """``text`` with the cache folder written as ``<cache>``: shorter, and the same on every machine."""
    return text.replace(str(cache_folder()), "<cache>")


def synthetic_checkpoint(max_steps: int) -> Path:
    """``best.ckpt`` of ``recipes/synthetic/convtasnet.yaml`` trained for ``max_steps``
    steps (the README's main job trains 3000), from the cache, or trained now and cached.

    The cosine learning-rate schedule of the recipe decays over ``max_steps``, so a short
    budget is a complete, shorter schedule, not the first steps of the long one. The
    synthetic corpus is generated once under ``<cache>/data/synthetic`` and shared. The
    command and the last lines of the training log are printed, the same whether the
    model was trained now or read from the cache.
    """
    overrides = [
        f"--trainer.max_steps={max_steps}",
        f"--trainer.val_check_interval={max(max_steps // 2, 1)}",
        "--test_after_fit=false",
    ]
    key = hashlib.sha256(SYNTHETIC_RECIPE.read_bytes() + json.dumps(overrides).encode()).hexdigest()[:12]
    runs = cache_folder() / "runs"
    run = runs / f"synthetic_convtasnet_{max_steps}steps_{key}"
    checkpoint = run / "checkpoints" / "best.ckpt"
    recipe = SYNTHETIC_RECIPE.relative_to(REPOSITORY)
    print(f"$ sepkit train --config {recipe} {' '.join(overrides)}  (run once, then cached)")
    if not checkpoint.is_file():
        runs.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".training-", dir=runs))
        try:
            sepkit(
                "train",
                "--config",
                SYNTHETIC_RECIPE,
                *overrides,
                f"--data.synthetic_root={cache_folder() / 'data' / 'synthetic'}",
                f"--trainer.default_root_dir={staging}",
                f"--name={run.name}",
                show=0,
                log=staging / "train.log",
                echo=False,
            )
            os.replace(staging / "train.log", staging / run.name / "train.log")
            try:
                os.replace(staging / run.name, run)
            except OSError:
                if not checkpoint.is_file():  # not a concurrent run that finished first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log = (run / "train.log").read_text().splitlines()
    print("\n".join([line for line in log if line.startswith("step ")][-TRAIN_LOG_TAIL:]))
    return checkpoint
