"""The paper and synthetic recipes of Conv-TasNet, DPRNN, SepFormer and SuDoRM-RF parse
with ``sepkit train --print_config`` and build the paper-sized models; the WHAMR!,
3-speaker and SSC recipes are their 2-speaker baselines with only the stated changes.
(tests/test_recipe_runs.py trains every recipe for two steps.)"""

from __future__ import annotations

import re
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
# Derived recipes: (recipe, its 2-speaker baseline, the model_config keys that differ, the data block's mixture folder)
THREE_SPEAKER_MODELS = ("convtasnet", "dprnn", "sudormrf", "afrcnn", "dprcnet")
DERIVED = [
    *((f"wsj0-3mix/{m}", f"wsj0-2mix/{m}", {"n_src": 3}, "mix") for m in THREE_SPEAKER_MODELS),
    *((f"libri3mix/{m}", f"libri2mix/{m}", {"n_src": 3}, "mix_clean") for m in THREE_SPEAKER_MODELS),
    *((f"whamr/{m}", f"wham/{m}", {}, "mix_both_reverb") for m in THREE_SPEAKER_MODELS),
    ("wsj0-2mix/convtasnet_ssc", "wsj0-2mix/convtasnet", {"ssc": {"preset": "pointwise", "kernel_size": 3}}, "mix"),
    ("wsj0-2mix/dprnn_ssc", "wsj0-2mix/dprnn", {"ssc": {"preset": "projection", "kernel_size": 3}}, "mix"),
]
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


def _stated_parameters(text: str) -> set[int]:
    """Every parameter count a recipe's comments state (numbers written with thousands commas)."""
    return {int(n.replace(",", "")) for n in re.findall(r"\b\d{1,3}(?:,\d{3}){2}\b", text)}


@pytest.mark.parametrize("derived", DERIVED, ids=lambda d: d[0])
def test_derived_recipe_is_its_baseline_with_only_the_stated_changes(derived, capsys, monkeypatch) -> None:
    name, baseline_name, changes, mixture_folder = derived
    recipe, baseline = RECIPES / f"{name}.yaml", RECIPES / f"{baseline_name}.yaml"
    config = print_config(recipe, PLACEHOLDER_DATA, capsys, monkeypatch)
    reference = print_config(baseline, PLACEHOLDER_DATA, capsys, monkeypatch)
    assert config["model"]["model_config"] == {**reference["model"]["model_config"], **changes}
    # same training: optimiser, schedule, trainer, early stopping, batch and crops
    for block in ("trainer", "early_stopping"):
        assert config[block] == reference[block]
    assert {k: v for k, v in config["model"].items() if k != "model_config"} == {
        k: v for k, v in reference["model"].items() if k != "model_config"
    }
    differing = {k for k in config["data"] if config["data"][k] != reference["data"][k]}
    assert differing <= {"mixture_folder", "n_src"} and config["data"]["mixture_folder"] == mixture_folder
    model = build_model(config["model"]["model_name"], **config["model"]["model_config"])
    assert model.n_src == config["data"]["n_src"] == changes.get("n_src", 2)
    built = sum(p.numel() for p in model.parameters())
    # the count the recipe states is the model's (SSC keeps the replaced layers' parameters)
    assert built in _stated_parameters(recipe.read_text()), (built, recipe)
    if "ssc" in changes:
        assert built == PAPER_PARAMS[baseline.stem]


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


@pytest.mark.parametrize("recipe", sorted((RECIPES / "synthetic").glob("*.yaml")), ids=lambda p: p.stem)
def test_synthetic_recipe_result_is_set_by_a_step_budget(recipe: Path) -> None:
    # Hitting a max_time is an error now (issue #19): the step budget alone ends training,
    # and the cosine schedule reaches its small final LR exactly at that budget.
    config = yaml.safe_load(recipe.read_text())
    assert "max_time" not in config["trainer"]
    assert isinstance(config["trainer"]["max_steps"], int) and config["trainer"]["max_steps"] > 0
    assert config["model"]["lr_schedule"] == "cosine"
