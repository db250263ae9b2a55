"""Shared fixtures: a tiny recipe that trains in seconds on the CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from sepkit.models import build_model

TESTS_DIR = Path(__file__).parent

TINY_MODEL = dict(
    n_src=2, n_filters=16, kernel_size=16, stride=8, bottleneck=8, hidden=16, skip_channels=8, n_blocks=2, n_repeats=1
)


def tiny_recipe(root: Path, train_mixtures: int = 16, **trainer) -> Path:
    """Write a small `sepkit train` recipe under ``root`` and return its path."""
    recipe = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            # The run folder (config.yaml) stays under root, also for in-process runs.
            "default_root_dir": str(root / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root / "logs")},
            },
            **trainer,
        },
        "model": {"model_name": "conv_tasnet", "model_config": TINY_MODEL, "lr": 0.003},
        "data": {
            "synthetic": {
                "seed": 0,
                "speakers": [4, 2, 2],
                "utterances_per_speaker": 2,
                "mixtures": [train_mixtures, 4, 4],
                "mixture_seconds": 1.0,
            },
            "synthetic_root": str(root / "synthetic"),
            "segment_seconds": 0.5,
            "batch_size": 4,
            "eval_batch_size": 2,
        },
        "checkpoint": {"dirpath": str(root / "checkpoints")},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def check_recipe(path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    """``sepkit train --config <path> --print_config`` succeeds in-process (every key is a
    real SeparationModule / SeparationDataModule / Trainer argument); the printed model
    builds and agrees with the data block on sample rate and sources."""
    from sepkit.cli import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    config = yaml.safe_load(capsys.readouterr().out)
    model = build_model(config["model"]["model_name"], **config["model"]["model_config"])
    assert model.sample_rate == config["data"]["sample_rate"], path
    assert model.n_src == config["data"]["n_src"], path
    return model


def sepkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sepkit.cli", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_sepkit(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        sepkit_command(*args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def recipe(tmp_path):
    return tiny_recipe(tmp_path)


# ---------------------------------------------------------------------------------------
# Strict skip gate (`--allowed-skips FILE`): the README test command, which `.ci/run`
# executes, passes it so that a test which silently stops running fails CI instead of
# turning into one more "s" in the progress line. Every skip or xfail whose reason matches
# no pattern of FILE is listed at the end of the run and turns the exit status into a
# failure. FILE holds one regular expression per line, searched in the reason text, each
# followed by `  # why this may skip`; blank lines and whole-line comments are ignored.
# ---------------------------------------------------------------------------------------

ALLOWED_SKIPS_OPTION = "--allowed-skips"
ALLOW_LIST_SEPARATOR = "  # "


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        ALLOWED_SKIPS_OPTION,
        metavar="FILE",
        default=None,
        help="fail the run on any skip or xfail whose reason matches no regular expression in FILE",
    )


def read_allowed_skips(path: Path) -> list[re.Pattern[str]]:
    """Patterns of an allow-list file; every pattern must carry its justification."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise pytest.UsageError(f"{path}: cannot read the skip allow-list ({error.strerror})") from None
    patterns = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, separator, why = line.partition(ALLOW_LIST_SEPARATOR)
        if not separator or not why.strip():
            raise pytest.UsageError(f"{path}:{number}: allow-list entry without '{ALLOW_LIST_SEPARATOR}why' comment")
        try:
            patterns.append(re.compile(pattern.strip()))
        except re.error as error:
            raise pytest.UsageError(f"{path}:{number}: not a regular expression ({error})") from None
    return patterns


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason of a skipped or xfailed test or module, else ``None``."""
    if hasattr(report, "wasxfail"):  # xfail, and a non-strict xfail that passed
        return f"xfail: {report.wasxfail}"
    if not report.skipped:
        return None
    if isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)


class SkipGate:
    """Collects skips whose reason no allow-list pattern matches; fails the session on them."""

    def __init__(self, allowed: list[re.Pattern[str]], source: Path) -> None:
        self.allowed = allowed
        self.source = source
        self.unexpected: list[tuple[str, str]] = []

    def record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        reason = skip_reason(report)
        if reason is not None and not any(pattern.search(reason) for pattern in self.allowed):
            self.unexpected.append((report.nodeid, reason))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Skip marks and fixtures skip in the "setup" phase, pytest.skip() and xfails in "call".
        self.record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("skips not on the allow-list", sep="=", red=True, bold=True)
        terminalreporter.line(f"{len(self.unexpected)} skip(s) match no pattern of {self.source}:")
        for nodeid, reason in self.unexpected:
            terminalreporter.line(f"UNEXPECTED SKIP {nodeid or '<session>'}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    allow_list = config.getoption(ALLOWED_SKIPS_OPTION)
    if allow_list is not None:
        path = Path(allow_list)
        config.pluginmanager.register(SkipGate(read_allowed_skips(path), path), "sepkit-skip-gate")
