"""The paper and synthetic recipes of Conv-TasNet, DPRNN, SepFormer and SuDoRM-RF parse
with ``sepkit train --print_config`` and build the paper-sized models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from sepkit.cli import main
from sepkit.models import build_model, list_models
from sepkit.training import model_data_settings

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PAPER_PARAMS = {"convtasnet": 5_050_545, "dprnn": 2_608_065, "sepformer": 25_679_361, "sudormrf": 2_662_022}
PAPER_RECIPES = [RECIPES / ds / f"{model}.yaml" for ds in ("wsj0-2mix", "libri2mix", "wham") for model in PAPER_PARAMS]
SYNTHETIC_RECIPES = [RECIPES / "synthetic" / f"{model}.yaml" for model in ("dprnn", "sepformer", "sudormrf")]
PLACEHOLDER_DATA = [
    "--data.train",
    "/placeholder/tr",
    "--data.valid",
    "/placeholder/cv",
    "--data.test",
    "/placeholder/tt",
]


def print_config(recipe: Path, extra: list[str], capsys, monkeypatch) -> dict:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), *extra, "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_recipe_parses_and_builds_the_paper_model(recipe: Path, capsys, monkeypatch) -> None:
    config = print_config(recipe, PLACEHOLDER_DATA, capsys, monkeypatch)
    assert config["data"]["train"] == "/placeholder/tr"
    assert config["data"]["sample_rate"] == 8000 and config["trainer"]["gradient_clip_val"] == 5.0
    model = build_model(config["model"]["model_name"], **config["model"]["model_config"])
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[recipe.stem]


@pytest.mark.parametrize("recipe", SYNTHETIC_RECIPES, ids=lambda p: p.stem)
def test_synthetic_recipe_parses_and_builds(recipe: Path, capsys, monkeypatch) -> None:
    config = print_config(recipe, [], capsys, monkeypatch)
    assert config["data"]["synthetic"] is not None
    assert config["model"]["model_name"] == recipe.stem
    model = build_model(config["model"]["model_name"], **config["model"]["model_config"])
    # Small enough for the 2-core CPU budget the synthetic recipes are made for.
    assert sum(p.numel() for p in model.parameters()) < 1_500_000


@pytest.mark.parametrize("model_name", list_models())
def test_data_settings_read_without_building_match_the_built_model(model_name: str) -> None:
    # What `sepkit train` links into the data block, against the model itself (signature
    # defaults: GC3 16 kHz, the others 8 kHz).
    default = build_model(model_name)
    assert model_data_settings(model_name, {}) == (default.sample_rate, default.n_src)
    assert default.sample_rate == (16000 if model_name == "gc3" else 8000)
    given = {"sample_rate": 11025, "n_src": 3}
    assert model_data_settings(model_name, given) == (11025, 3)
    with pytest.raises(ValueError, match="no_such_argument"):
        model_data_settings(model_name, {"no_such_argument": 1})
