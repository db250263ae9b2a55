"""The paper recipes' learning-rate schedules, stepped through a scripted sequence of
validation losses epoch by epoch (as Lightning steps them: after each validation) and
compared with each paper's rule written out here independently of PyTorch's schedulers."""

from pathlib import Path

import pytest
import torch
import yaml

from sepkit.training import SeparationModule

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CORPORA = ("wsj0-2mix", "wham", "libri2mix")

# Validation losses (negative SI-SDR, dB) over 120 epochs: stretches of clear improvement
# (>= 0.25 dB per epoch) between plateaus of 1 to 7 epochs that are equal or worse.
SCRIPT: list[float] = []
for improving, flat in [(5, 7), (3, 2), (4, 3), (2, 5), (6, 1), (3, 4), (2, 6), (4, 3)] * 4:
    start = SCRIPT[-1] if SCRIPT else 0.0
    SCRIPT += [start - 0.5 * (i + 1) for i in range(improving)]
    SCRIPT += [SCRIPT[-1] + 0.25 * (i % 2) for i in range(flat)]
SCRIPT = SCRIPT[:120]


def halve_after_epochs_without_improvement(losses: list[float], lr: float, epochs: int) -> list[float]:
    """Conv-TasNet (Luo & Mesgarani 2019): the LR is halved when the validation loss has
    not improved for ``epochs`` consecutive epochs; the count starts again after a cut."""
    best, stale, rates = float("inf"), 0, []
    for loss in losses:
        if loss < best:
            best, stale = loss, 0
        else:
            stale += 1
        if stale == epochs:
            lr, stale = lr / 2, 0
        rates.append(lr)
    return rates


def every_n_epochs(losses: list[float], lr: float, factor: float, n: int) -> list[float]:
    """DPRNN (x0.98 every 2 epochs), SuDoRM-RF (/5 every 50): after epoch k (1-based) the
    LR is ``lr * factor ** (k // n)``."""
    return [lr * factor ** (k // n) for k in range(1, len(losses) + 1)]


def scheduled_rates(recipe: Path, losses: list[float]) -> tuple[float, list[float]]:
    """The recipe's initial LR and its LR after each epoch, stepped as Lightning does."""
    module = SeparationModule(**yaml.safe_load(recipe.read_text())["model"])
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"].get("interval", "epoch") == "epoch"
    rates = []
    for loss in losses:
        optimizer.step()  # no gradients: the weights stay, the scheduler sees a real step
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return module.hparams.lr, rates


def test_the_reference_rule_by_hand_on_the_script():
    assert len(SCRIPT) == 120
    rates = halve_after_epochs_without_improvement(SCRIPT, 1.0, 3)
    # Epochs 1-5 improve, 6-12 do not: cuts after epochs 8 and 11 (3 and 6 stale epochs).
    assert rates[:12] == [1.0] * 7 + [0.5] * 3 + [0.25] * 2
    # Epochs 13-15 improve, 16-17 do not: a 2-epoch plateau cuts nothing.
    assert rates[12:17] == [0.25] * 5


@pytest.mark.parametrize("corpus", CORPORA)
def test_convtasnet_halves_after_three_epochs_without_improvement(corpus):
    lr, rates = scheduled_rates(RECIPES / corpus / "convtasnet.yaml", SCRIPT)
    assert lr == 1e-3
    assert rates == pytest.approx(halve_after_epochs_without_improvement(SCRIPT, lr, 3), rel=1e-12)


@pytest.mark.parametrize("corpus", CORPORA)
def test_dprnn_decays_by_0_98_every_two_epochs(corpus):
    lr, rates = scheduled_rates(RECIPES / corpus / "dprnn.yaml", SCRIPT)
    assert lr == 1e-3
    assert rates == pytest.approx(every_n_epochs(SCRIPT, lr, 0.98, 2), rel=1e-12)


@pytest.mark.parametrize("corpus", CORPORA)
def test_sudormrf_divides_by_five_every_50_epochs(corpus):
    lr, rates = scheduled_rates(RECIPES / corpus / "sudormrf.yaml", SCRIPT)
    assert lr == 1e-3
    assert rates == pytest.approx(every_n_epochs(SCRIPT, lr, 0.2, 50), rel=1e-12)
    assert rates[48] == lr and rates[49] == pytest.approx(lr / 5) and rates[99] == pytest.approx(lr / 25)


@pytest.mark.parametrize("corpus", CORPORA)
def test_afrcnn_divides_by_three_every_40_epochs(corpus):
    lr, rates = scheduled_rates(RECIPES / corpus / "afrcnn.yaml", SCRIPT)
    assert lr == 1e-3
    assert rates == pytest.approx([lr / 3 ** (k // 40) for k in range(1, 121)], rel=1e-12)


@pytest.mark.parametrize("corpus", CORPORA)
def test_dprcnet_decays_by_0_98_every_two_epochs_then_by_0_9(corpus):
    lr, rates = scheduled_rates(RECIPES / corpus / "dprcnet.yaml", SCRIPT)
    assert lr == 1e-3
    # Yang & Bao: x0.98 every two epochs for the first 100 epochs, then x0.9 every two.
    # rates[k - 1] is the LR during epoch k (0-based), after k scheduler steps.
    expected = []
    current = lr
    for epoch in range(1, 121):
        if epoch % 2 == 0:
            current *= 0.98 if epoch <= 100 else 0.9
        expected.append(current)
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[99] == pytest.approx(lr * 0.98**50) and rates[101] == pytest.approx(lr * 0.98**50 * 0.9)
