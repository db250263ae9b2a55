"""Every notebook runs top to bottom, and the quick start shows what its text claims:
the models it lists, the parameter count and shapes it prints, mixtures that are the sum
of their sources, and finite scores that agree with a float64 SI-SDR computed here."""

import contextlib
import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# The seven architectures the README's models table documents.
DOCUMENTED_MODELS = {"conv_tasnet", "dprnn", "sepformer", "sudormrf", "afrcnn", "gc3", "dprcnet"}


def run_notebook(path: Path) -> tuple[dict, list[str]]:
    """Execute the code cells in order in one namespace; return it and each code cell's stdout."""
    namespace: dict = {}
    printed = []
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile("".join(cell["source"]), f"{path.name}[cell {index}]", "exec"), namespace)
        printed.append(stdout.getvalue())
    return namespace, printed


def conv_tasnet_parameters(
    n_filters: int,
    bottleneck: int,
    hidden: int,
    skip_channels: int,
    n_blocks: int,
    n_repeats: int,
    n_src: int,
    kernel_size: int = 16,
    conv_kernel_size: int = 3,
) -> int:
    """Conv-TasNet's parameter count from its layer shapes (Luo & Mesgarani 2019, Fig. 1):
    N x L encoder and decoder without bias, gLN (2N) and the B x N bottleneck, per block a
    1x1 B -> H conv, PReLU, gLN, depthwise H x P conv, PReLU, gLN and the residual and skip
    1x1 convs, then a PReLU and the 1x1 Sc -> C*N mask conv (all convs with bias)."""
    N, L, B, H, Sc, P, C = n_filters, kernel_size, bottleneck, hidden, skip_channels, conv_kernel_size, n_src
    block = (B * H + H) + 1 + 2 * H + (H * P + H) + 1 + 2 * H + (H * B + B) + (H * Sc + Sc)
    return N * L + 2 * N + (N * B + B) + n_blocks * n_repeats * block + 1 + (Sc * C * N + C * N) + N * L


def si_sdr_float64(estimate: np.ndarray, target: np.ndarray) -> float:
    """SI-SDR in dB (Le Roux et al. 2019) of two zero-meaned 1-D signals, in float64."""
    estimate = estimate.astype(np.float64) - estimate.mean()
    target = target.astype(np.float64) - target.mean()
    projection = (estimate @ target) / (target @ target) * target
    return float(10 * np.log10((projection @ projection) / ((estimate - projection) @ (estimate - projection))))


def test_parameter_formula_gives_the_published_count():
    """The formula the quick-start check relies on reproduces the paper configuration's
    5,050,545 parameters (N=512 L=16 B=128 H=512 Sc=128 P=3 X=8 R=3; Conv-TasNet reports 5.1M)."""
    assert conv_tasnet_parameters(512, 128, 512, 128, 8, 3, 2) == 5_050_545


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    run_notebook(path)


def test_quickstart_shows_what_it_claims():
    namespace, printed = run_notebook(NOTEBOOK_DIR / "quickstart.ipynb")
    listed, built, rendered, scored = printed

    # Cell 1 lists the registered models: all seven documented ones.
    assert DOCUMENTED_MODELS <= set(namespace["list_models"]())
    assert listed.strip() == str(namespace["list_models"]())

    # Cell 3: the printed parameter count is Conv-TasNet's for the config the cell passed,
    # and the output keeps the input length ("[batch, n_src, time] of the same length").
    model = namespace["model"]
    expected_parameters = conv_tasnet_parameters(**model.model_config)
    count_line, shape_line = built.strip().splitlines()
    assert count_line == f"{expected_parameters} parameters"
    assert shape_line == "torch.Size([1, 2, 12345])"

    # Cell 5: one test mixture of the configured length, the sum of its two sources, and
    # the input SI-SDR it prints is finite and matches the float64 value.
    data, mixture, sources = namespace["data"], namespace["mixture"], namespace["sources"]
    length = round(data.cfg.mixture_seconds * data.cfg.sample_rate)
    assert mixture.shape == (length,) and sources.shape == (2, length)
    torch.testing.assert_close(mixture, sources.sum(0), atol=1e-6, rtol=0)
    printed_input = [float(x) for x in re.findall(r"-?\d+\.\d+", rendered.split("input SI-SDR per source:")[1])]
    oracle_input = [si_sdr_float64(mixture.numpy(), source.numpy()) for source in sources]
    assert np.all(np.isfinite(printed_input))
    np.testing.assert_allclose(printed_input, oracle_input, atol=1e-3)

    # Cell 7: the estimate has the sources' shape; the PIT score is the best mean float64
    # SI-SDR over source orders, the printed permutation attains it, and the printed
    # improvement is that score minus the mean input SI-SDR.
    estimate = namespace["estimate"][0].numpy()
    assert estimate.shape == tuple(sources.shape)
    by_order = {
        order: np.mean([si_sdr_float64(estimate[e], sources[t].numpy()) for t, e in enumerate(order)])
        for order in itertools.permutations(range(2))
    }
    match = re.fullmatch(r"SI-SDR (\S+) dB, improvement (\S+) dB, permutation \[\[(\d), (\d)\]\]\n", scored)
    assert match, scored
    score, improvement = float(match[1]), float(match[2])
    order = (int(match[3]), int(match[4]))
    assert np.isfinite(score) and np.isfinite(improvement)
    assert score == pytest.approx(max(by_order.values()), abs=0.01)
    assert by_order[order] == pytest.approx(max(by_order.values()), abs=1e-3)
    assert improvement == pytest.approx(score - np.mean(oracle_input), abs=0.02)
