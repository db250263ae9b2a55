"""``sepkit profile``'s forward latency, real-time factor and ``--threads``.

The CLI runs in a child process wherever it sets a thread count: torch's thread count is
process-wide, and this torch CPU build leaves later batched ``linalg.solve`` calls broken
after ``set_num_threads`` is changed and changed back in one process. No assertion here
depends on how fast anything runs; timings belong in ``bench/``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_MODEL, run_sepkit

from sepkit.cli import main
from sepkit.models import build_model
from sepkit.profiling import measure_latency

RATE = 8000


def test_profile_reports_rtf_and_honours_threads_in_a_child(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_MODEL))
    out = tmp_path / "profile.json"
    # 0.30007 s is 2400.56 samples at 8 kHz: the input has 2401, and the RTF must use
    # the duration of what was actually separated (both batch items), not --seconds.
    seconds, batch, repeats = 0.30007, 2, 3
    # run_sepkit's child starts with OMP_NUM_THREADS=1, so 2 can only come from --threads.
    result = run_sepkit(
        "profile",
        "conv_tasnet",
        "--config",
        str(config),
        "--seconds",
        str(seconds),
        "--batch",
        str(batch),
        "--threads",
        "2",
        "--repeats",
        str(repeats),
        "--warmup",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(out.read_text())["conv_tasnet"]
    assert stats["threads"] == 2
    assert "2 CPU thread(s)" in result.stdout
    # The keys profile wrote before latency was added are still there, with their values.
    assert stats["parameters"] == sum(p.numel() for p in build_model("conv_tasnet", **TINY_MODEL).parameters())
    assert stats["macs"] > 0 and stats["peak_inference_bytes"] > 0 and stats["peak_training_bytes"] > 0
    assert (stats["seconds"], stats["batch"], stats["sample_rate"]) == (seconds, batch, RATE)
    latencies = stats["latencies_s"]
    assert len(latencies) == repeats and stats["repeats"] == repeats and stats["warmup"] == 1
    assert stats["latency_median_s"] == statistics.median(latencies)
    assert stats["latency_min_s"] == min(latencies) and stats["latency_max_s"] == max(latencies)
    q1, _, q3 = statistics.quantiles(latencies, n=4, method="inclusive")
    assert stats["latency_iqr_s"] == pytest.approx(q3 - q1)
    audio_seconds = batch * 2401 / RATE
    assert stats["audio_seconds"] == pytest.approx(audio_seconds, rel=1e-12)
    assert stats["rtf"] == pytest.approx(statistics.median(latencies) / audio_seconds, rel=1e-12)


class CountingModel(torch.nn.Module):
    """Two half-scaled copies of the input; counts its forward passes and whether
    autograd was recording."""

    sample_rate = RATE
    n_src = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = 0
        self.grad_calls = 0

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.grad_calls += torch.is_grad_enabled()
        return (mixture * self.scale).unsqueeze(1).expand(-1, self.n_src, -1)


def test_warmup_passes_are_run_but_not_timed() -> None:
    model = CountingModel().train()
    stats = measure_latency(model, seconds=0.1, batch=3, repeats=4, warmup=2)
    assert model.calls == 6 and model.grad_calls == 0 and not model.training
    assert len(stats["latencies_s"]) == 4
    assert stats["audio_seconds"] == pytest.approx(3 * 800 / RATE)
    assert stats["rtf"] == pytest.approx(stats["latency_median_s"] / stats["audio_seconds"])
    assert stats["device"] == "cpu"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "--threads must be at least 1, got 0"),
        ("--repeats", "0", "--repeats must be at least 1, got 0"),
        ("--warmup", "-1", "--warmup must be at least 0, got -1"),
        ("--batch", "0", "--batch must be at least 1, got 0"),
        ("--seconds", "nan", "--seconds must be a positive number of seconds, got nan"),
        ("--seconds", "-2", "--seconds must be a positive number of seconds, got -2.0"),
    ],
)
def test_bad_values_get_one_line_errors(option: str, value: str, message: str, capsys) -> None:
    # Refused before anything changes the thread count, so this can run in-process.
    threads = torch.get_num_threads()
    assert main(["profile", "conv_tasnet", option, value]) == 2
    error = capsys.readouterr().err
    assert error == f"sepkit profile: {message}\n"
    assert torch.get_num_threads() == threads
