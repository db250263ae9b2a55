"""Asteroid 0.7.0 model files load into sepkit and give the same separations.

The oracle is Asteroid itself: models are built and serialised with asteroid 0.7.0,
loaded with ``sepkit.models.from_asteroid`` and both run on the same random input.
CI installs it with ``pip install --no-deps asteroid==0.7.0 asteroid-filterbanks==0.4.0
requests huggingface_hub`` (Asteroid's package import needs only those two light extras).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

asteroid_models = pytest.importorskip(
    "asteroid.models",
    reason="asteroid 0.7.0 is not installed (pip install --no-deps asteroid==0.7.0 asteroid-filterbanks)",
)

from sepkit.models import from_asteroid  # noqa: E402

# Each case's length is on its model's padding grid; the test also runs one sample
# either side of it and a few samples further, off the encoder's stride grid, where
# Asteroid's ConvTasNet/DPRNN drop the samples their unpadded encoder does not reach
# (sepkit's framing="truncate") and its SuDoRM-RF pads to its lcm multiple.
OFF_GRID = (0, 1, -1, 3, 5)
CASES = [
    pytest.param(
        "ConvTasNet",
        dict(n_filters=32, kernel_size=16, stride=8, bn_chan=16, hid_chan=32, skip_chan=16, n_blocks=3, n_repeats=2),
        8 * 99,
        id="convtasnet",
    ),
    pytest.param(
        "ConvTasNet",
        dict(
            n_filters=32,
            kernel_size=16,
            stride=8,
            bn_chan=16,
            hid_chan=32,
            skip_chan=16,
            n_blocks=3,
            n_repeats=1,
            causal=True,
            norm_type="cLN",
            mask_act="relu",
        ),
        8 * 77,
        id="convtasnet-causal-cln-relu",
    ),
    pytest.param(
        "DPRNNTasNet",
        dict(n_filters=32, kernel_size=2, stride=1, bn_chan=16, hid_size=16, chunk_size=20, hop_size=10, n_repeats=2),
        533,
        id="dprnn-ks2",
    ),
    pytest.param(
        "DPRNNTasNet",
        dict(
            n_filters=32, kernel_size=16, stride=8, bn_chan=24, hid_size=16, chunk_size=15, n_repeats=2, mask_act="relu"
        ),
        8 * 61,
        id="dprnn-ks16-relu-odd-chunk",
    ),
    pytest.param(
        "SuDORMRFNet",
        dict(n_filters=64, bn_chan=16, num_blocks=3, upsampling_depth=4),
        80 * 9,
        id="sudormrf-depth4",
    ),
    pytest.param(
        "SuDORMRFNet",
        dict(n_filters=64, bn_chan=16, num_blocks=2, upsampling_depth=5, n_src=3),
        160 * 5,
        id="sudormrf-depth5-3src",
    ),
    pytest.param(
        "SuDORMRFImprovedNet",
        dict(n_filters=64, bn_chan=16, num_blocks=3, upsampling_depth=5),
        160 * 5,
        id="sudormrf-improved",
    ),
]


def _randomise(model: torch.nn.Module) -> None:
    # Default inits leave norms at identity and PReLUs at 0.25; perturb every parameter
    # so a wrongly mapped gain, bias or slope cannot hide.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("name, kwargs, length", CASES)
def test_asteroid_model_file_matches(name: str, kwargs: dict, length: int, tmp_path) -> None:
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    n_src = kwargs.pop("n_src", 2)
    reference = getattr(asteroid_models, name)(n_src=n_src, **kwargs).eval()
    _randomise(reference)
    path = tmp_path / "best_model.pth"
    torch.save(reference.serialize(), path)

    model = from_asteroid(path)
    for offset in OFF_GRID:
        wav = torch.randn(2, length + offset)
        with torch.no_grad():
            expected = reference(wav)
            got = model(wav)
        assert got.shape == expected.shape == (2, n_src, length + offset)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=f"{length + offset} samples")


def test_asteroid_models_take_inputs_shorter_than_one_window() -> None:
    reference = asteroid_models.ConvTasNet(
        n_src=2, n_filters=16, kernel_size=16, stride=8, bn_chan=8, hid_chan=16, skip_chan=8, n_blocks=2, n_repeats=1
    ).eval()
    model = from_asteroid(reference.serialize())
    assert model.framing == "truncate"
    wav = torch.randn(1, 11)
    with torch.no_grad():
        # Asteroid cannot encode 11 < 16 samples; sepkit pads to one window, which is
        # Asteroid's output on the zero-padded window, cropped.
        torch.testing.assert_close(model(wav), reference(F.pad(wav, (0, 5)))[..., :11], atol=1e-6, rtol=1e-6)


def test_from_asteroid_accepts_the_dict_and_records_the_config() -> None:
    reference = asteroid_models.DPRNNTasNet(n_src=2, n_filters=16, bn_chan=8, hid_size=8, chunk_size=10, n_repeats=1)
    model = from_asteroid(reference.serialize())
    assert model.model_name == "dprnn"
    assert model.model_config["chunk_padding"] == "chunk"
    assert model.model_config["hop"] == 5


def test_from_asteroid_rejects_unsupported_models() -> None:
    package = asteroid_models.DPRNNTasNet(
        n_src=2, n_filters=16, bn_chan=8, hid_size=8, chunk_size=10, n_repeats=1
    ).serialize()
    package["model_name"] = "DPTNet"
    with pytest.raises(ValueError, match="unsupported Asteroid model 'DPTNet'"):
        from_asteroid(package)
    with pytest.raises(ValueError, match="not an Asteroid model dict"):
        from_asteroid({"state_dict": {}})
