"""The strict skip gate of tests/conftest.py (`--allowed-skips`), exercised by real pytest
runs in a child process on small test files: an unlisted skip or xfail fails the run and
is named, a listed one passes, a malformed allow-list is refused."""

import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

ALLOW_LIST = Path(__file__).parent / "allowed_skips.txt"

SKIPPING_TESTS = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("needs the moon")
"""


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest on ``folder`` with tests/conftest.py loaded as a plugin (``-p conftest``)."""
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(
        [*command, str(folder)], cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_unlisted_skip_fails_the_run_and_is_named(tmp_path):
    write(tmp_path, "test_moon.py", SKIPPING_TESTS)
    allow = write(tmp_path, "allowed.txt", "# nothing but a comment\n\nneeds the sun  # solar tests\n")
    result = run_pytest(tmp_path, "--allowed-skips", str(allow))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "UNEXPECTED SKIP test_moon.py::test_skips: needs the moon" in result.stdout
    # Without the gate the same run passes: the failure is the gate's doing.
    assert run_pytest(tmp_path).returncode == 0


def test_listed_skip_passes(tmp_path):
    write(tmp_path, "test_moon.py", SKIPPING_TESTS)
    allow = write(tmp_path, "allowed.txt", "needs the (moon|sun)  # lunar tests run on the moon only\n")
    result = run_pytest(tmp_path, "--allowed-skips", str(allow))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert "UNEXPECTED SKIP" not in result.stdout


def test_module_skips_and_xfails_are_gated(tmp_path):
    """Collection-time skips (module-level importorskip) and xfails count as skips too."""
    write(tmp_path, "test_missing.py", "import pytest\npytest.importorskip('no_such_module_here')\n")
    write(
        tmp_path,
        "test_xfail.py",
        "import pytest\n\n@pytest.mark.xfail(reason='known bug')\ndef test_bug():\n    assert False\n",
    )
    allow = write(tmp_path, "allowed.txt", "needs the sun  # solar tests\n")
    result = run_pytest(tmp_path, "--allowed-skips", str(allow))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "UNEXPECTED SKIP test_missing.py: could not import 'no_such_module_here'" in result.stdout
    assert "UNEXPECTED SKIP test_xfail.py::test_bug: xfail: known bug" in result.stdout


def test_real_failures_keep_their_exit_status(tmp_path):
    write(tmp_path, "test_fails.py", SKIPPING_TESTS + "\ndef test_fails():\n    assert False\n")
    allow = write(tmp_path, "allowed.txt", "needs the moon  # lunar\n")
    assert run_pytest(tmp_path, "--allowed-skips", str(allow)).returncode == 1


def test_allow_list_entry_without_reason_is_refused(tmp_path):
    write(tmp_path, "test_moon.py", SKIPPING_TESTS)
    allow = write(tmp_path, "allowed.txt", "# header\nneeds the moon\n")
    result = run_pytest(tmp_path, "--allowed-skips", str(allow))
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error
    assert f"{allow}:2: allow-list entry without '  # why' comment" in result.stderr


def test_project_allow_list_is_well_formed_and_short(tmp_path):
    """Every entry of tests/allowed_skips.txt has a reason; a Triton import skip matches it,
    the Triton-interpreter skip (which must not skip in CI) does not."""
    from conftest import read_allowed_skips

    patterns = read_allowed_skips(ALLOW_LIST)
    assert 1 <= len(patterns) <= 5
    assert any(p.search("could not import 'triton': No module named 'triton'") for p in patterns)
    assert not any(p.search("Triton was imported before TRITON_INTERPRET=1 could be set") for p in patterns)
