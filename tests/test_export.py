"""``sepkit export``: ONNX (run by onnxruntime) and ``.pt2`` (torch.export archive)
artefacts of every registered model give the eager model's output at three lengths;
``sepkit export --card`` writes a model card with the README's citation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sepkit import __version__
from sepkit.checkpoint import load_model, save_model
from sepkit.cli import main
from sepkit.export import ExportedSeparator, ExportError, export_model, graph_length
from sepkit.models import build_model, list_models, small_config
from sepkit.models.citations import BIBTEX, CITATIONS

MODELS = list_models()
DECLARED = (50, 203, 801)


def small_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **small_config(name)).eval()


def declares_lengths(model: torch.nn.Module) -> bool:
    """Models documented (in their class docstring) to export at declared lengths only."""
    return "at declared lengths only" in " ".join((type(model).__doc__ or "").split())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", MODELS)
def test_exported_graphs_match_eager_at_three_lengths(name: str, tmp_path: Path) -> None:
    model = small_model(name)
    lengths = DECLARED if declares_lengths(model) else None
    export_model(model, tmp_path / "model.pt2", lengths)
    export_model(model, tmp_path / "model.onnx", lengths)
    pt2 = ExportedSeparator(tmp_path / "model.pt2")
    assert pt2.lengths == (sorted(lengths) if lengths else None)
    tests = list(DECLARED) if lengths else [pt2.shortest, 203, 801]
    for length in tests:
        onnx_path = tmp_path / ("model.onnx" if lengths is None else f"model.{length}.onnx")
        wav = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = model(wav)
        for artefact in (pt2, ExportedSeparator(onnx_path)):
            est = artefact(wav)
            assert est.shape == (2, 2, length), f"{artefact.path}: {tuple(est.shape)} for {length} samples"
            torch.testing.assert_close(est, expected, rtol=0, atol=1e-4, msg=f"{artefact.path} at {length}")


def test_dynamic_onnx_takes_a_new_batch_size_and_refuses_too_short_input(tmp_path: Path) -> None:
    model = small_model("conv_tasnet")
    export_model(model, tmp_path / "m.onnx")
    exported = ExportedSeparator(tmp_path / "m.onnx")
    wav = torch.randn(3, 517)
    with torch.no_grad():
        torch.testing.assert_close(exported(wav), model(wav), rtol=0, atol=1e-4)
    with pytest.raises(ExportError, match=r"m\.onnx: an input of 5 samples is shorter"):
        exported(torch.randn(1, 5))


@pytest.mark.filterwarnings("ignore")
def test_declared_length_artefact_records_and_enforces_its_lengths(tmp_path: Path) -> None:
    model = small_model("dprnn")
    with pytest.raises(ExportError, match="dprnn: cannot be exported with a dynamic length"):
        export_model(model, tmp_path / "dyn.pt2")
    assert not (tmp_path / "dyn.pt2").exists()
    export_model(model, tmp_path / "m.pt2", [300])
    exported = ExportedSeparator(tmp_path / "m.pt2")
    assert exported.lengths == [300] and exported.metadata["model_name"] == "dprnn"
    # Any length on the same graph length is accepted; another is refused by name.
    same_grid = next(
        n
        for n in sorted(range(1, 600), key=lambda n: abs(n - 300))
        if n != 300 and graph_length(exported.metadata, n) == graph_length(exported.metadata, 300)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            exported(torch.ones(1, same_grid)), model(torch.ones(1, same_grid)), rtol=0, atol=1e-4
        )
    with pytest.raises(ExportError, match=r"m\.pt2: exported at declared lengths \[300\]"):
        exported(torch.randn(1, 1000))


def test_graph_length_is_the_models_padding(tmp_path: Path) -> None:
    for name in MODELS:
        model = small_model(name)
        framing = {
            "framing": model.framing,
            "kernel_size": model.encoder.kernel_size,
            "stride": model.encoder.stride,
            "length_multiple": model.length_multiple,
        }
        for length in range(1, 400):
            expected = model.padded_length(length)
            if model.framing == "truncate" and length >= model.encoder.kernel_size:
                expected = length - (length - model.encoder.kernel_size) % model.encoder.stride
            assert graph_length(framing, length) == expected, (name, length)


@pytest.mark.filterwarnings("ignore")
def test_cli_exports_a_checkpoint_and_refuses_bad_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = small_model("sepformer")
    ckpt = tmp_path / "model.ckpt"
    save_model(model, ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "out.pt2")]) == 0
    exported = ExportedSeparator(tmp_path / "out.pt2")
    assert exported.metadata["model_config"] == small_config("sepformer")
    assert exported.metadata["sample_rate"] == model.sample_rate
    wav = torch.randn(1, 333)
    with torch.no_grad():
        torch.testing.assert_close(exported(wav), model(wav), rtol=0, atol=1e-4)
    assert json.loads(json.dumps(exported.metadata)) == exported.metadata

    assert main(["export", str(ckpt), str(tmp_path / "out.txt")]) == 2
    assert "out.txt: unknown export format '.txt'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "o.onnx")]) == 2
    assert "missing.ckpt: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def readme_bibtex() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return readme[readme.index("## References") :]


def test_every_citation_is_the_readme_entry_and_every_model_has_one() -> None:
    references = readme_bibtex()
    for key, entry in BIBTEX.items():
        assert entry.startswith("@") and f"{{{key}," in entry.splitlines()[0]
        assert entry in references, f"{key}: citations.py and README.md's References differ"
    assert references.count("\n@") == len(BIBTEX), "README.md has a reference citations.py lacks"
    assert set(MODELS) <= set(CITATIONS)


def test_model_card_has_config_metrics_versions_and_citation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = small_model("dprnn")
    ckpt = run / "checkpoints" / "model.pt"
    save_model(model, ckpt)
    rng = np.random.default_rng(0)
    for index in range(2):
        sources = (0.1 * rng.standard_normal((2, 1600))).astype(np.float32)
        for folder, signal in (("mix", sources.sum(0)), ("s1", sources[0]), ("s2", sources[1])):
            (tmp_path / "split" / folder).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "split" / folder / f"u{index}.wav", signal, model.sample_rate, subtype="FLOAT")
    assert main(["evaluate", str(ckpt), "--data", str(tmp_path / "split"), "--out-dir", str(run / "eval")]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text())

    assert main(["export", "--card", str(ckpt), str(tmp_path / "card.md")]) == 0
    card = (tmp_path / "card.md").read_text()
    assert card.startswith("# dprnn: model.pt\n")
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in card
    config = card[card.index("```json\n") + 8 : card.index("\n```", card.index("```json"))]
    assert json.loads(config) == small_config("dprnn")
    assert "Not recorded in the checkpoint." in card
    improvement = summary["metrics"]["si_sdr"]["improvement"]
    assert f"- si_sdr improvement: {improvement['mean']:.2f} (95% CI {improvement['ci_low']:.2f}" in card
    assert f"- n_scored: {summary['n_scored']}" in card
    assert f"card by sepkit {__version__}, torch {torch.__version__}" in card
    assert BIBTEX["luo2020dprnn"] in card and "luo2019convtasnet" not in card
    # The card never replaces its input.
    assert main(["export", "--card", str(ckpt), str(ckpt)]) == 2
    assert load_model(ckpt).model_name == "dprnn"
