"""Published models by name: ``hf://owner/name`` ids resolved offline from a Hugging Face
cache laid out in the test (``models--owner--name/snapshots/<rev>/``), and local
snapshot folders. Nothing is downloaded: HF_HUB_OFFLINE=1 throughout."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_sepkit
from test_converters import sb_length, write_sb_folder
from test_hostile_evaluate_train import si_sdr64, speech_like, write_split

from sepkit.checkpoint import CheckpointError, load_model, save_model
from sepkit.cli import main
from sepkit.models import build_model, small_config

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def snapshot(cache: Path, repo: str, revision: str = REVISION) -> Path:
    """An empty snapshot folder of ``repo`` in the cache layout, with ``refs/main`` to it;
    files are stored as blobs and linked in, as huggingface_hub does."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    folder = root / "snapshots" / revision
    folder.mkdir(parents=True)
    return folder


def link_as_blob(folder: Path, name: str, source: Path) -> None:
    blobs = folder.parents[1] / "blobs"
    blobs.mkdir(exist_ok=True)
    blob = blobs / f"blob-{name}"
    source.rename(blob)
    (folder / name).symlink_to(blob)


def small_sepkit_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_model("conv_tasnet", **small_config("conv_tasnet")).eval()


def test_hf_id_loads_the_sepkit_model_file_of_its_cached_snapshot(hub_cache: Path, tmp_path: Path) -> None:
    model = small_sepkit_model()
    folder = snapshot(hub_cache, "someone/tiny-tasnet")
    save_model(model, tmp_path / "model.pt")
    link_as_blob(folder, "model.pt", tmp_path / "model.pt")
    (folder / "README.md").write_text("# a model card\n")
    wav = torch.randn(1, 400)
    for source in (
        "hf://someone/tiny-tasnet",
        f"hf://someone/tiny-tasnet@{REVISION}",
        folder,
        Path("hf://someone/tiny-tasnet"),
    ):
        loaded = load_model(source)
        with torch.no_grad():
            torch.testing.assert_close(loaded(wav), model(wav), rtol=0, atol=0)


def test_hf_id_loads_a_speechbrain_card_snapshot(hub_cache: Path) -> None:
    folder = snapshot(hub_cache, "speechbrain/sepformer-tiny")
    write_sb_folder(folder)
    from_id = load_model("hf://speechbrain/sepformer-tiny")
    from_folder = load_model(folder)
    assert from_id.model_name == "sepformer"
    wav = torch.randn(1, 480)
    with torch.no_grad():
        torch.testing.assert_close(from_id(wav), from_folder(wav), rtol=0, atol=0)


def test_errors_name_the_id_and_the_problem(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        CheckpointError, match=r"^hf://nobody/nothing: not found in .*hf-cache and HF_HUB_OFFLINE is set$"
    ):
        load_model("hf://nobody/nothing")
    folder = snapshot(hub_cache, "someone/no-model")
    (folder / "config.json").write_text("{}")
    torch.save({"weights": torch.zeros(3)}, folder / "other.pt")
    with pytest.raises(CheckpointError, match=r"^hf://someone/no-model: no recognisable model in the snapshot"):
        load_model("hf://someone/no-model")
    save_model(small_sepkit_model(), folder / "a.pt")
    save_model(small_sepkit_model(), folder / "b.pt")
    with pytest.raises(CheckpointError, match=r"several model files in the snapshot \(a\.pt, b\.pt\)"):
        load_model(folder)
    with pytest.raises(CheckpointError, match=r"^hf://just-a-name: not a Hugging Face model id"):
        load_model("hf://just-a-name")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what a missing package looks like to import
    with pytest.raises(CheckpointError, match=r"^hf://someone/no-model: huggingface_hub is not installed"):
        load_model("hf://someone/no-model")


def test_separate_accepts_an_hf_id(hub_cache: Path, tmp_path: Path) -> None:
    model = small_sepkit_model()
    folder = snapshot(hub_cache, "someone/tiny-tasnet")
    save_model(model, folder / "model.pt")
    mix = np.random.default_rng(1).standard_normal(1234).astype(np.float32) * 0.1
    sf.write(tmp_path / "mix.wav", mix, model.sample_rate, subtype="FLOAT")
    result = run_sepkit("separate", "hf://someone/tiny-tasnet", "mix.wav", "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The child runs single-threaded, this process with two threads: float32 reduction
    # order differs, hence 1e-5. (Not torch.set_num_threads(1) and back: with torch 2.13's
    # CPU build that leaves later batched torch.linalg.solve calls failing on LU pivots.)
    with torch.no_grad():
        expected = model(torch.from_numpy(mix).unsqueeze(0))[0].numpy()
    for index in range(model.n_src):
        written, rate = sf.read(tmp_path / "out" / f"mix_s{index + 1}.wav", dtype="float32")
        assert rate == model.sample_rate
        np.testing.assert_allclose(written, expected[index], rtol=1e-5, atol=1e-5)


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file of a model folder, each preceded by its relative name."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("spelling", ["folder", "hf"])
def test_evaluate_accepts_what_separate_accepts(hub_cache: Path, tmp_path: Path, capsys, spelling: str) -> None:
    """``sepkit evaluate`` takes a SpeechBrain card folder or an ``hf://`` id, as
    ``separate`` and ``load_model`` do; it once refused both as "checkpoint not found".
    Scores agree with a float64 SI-SDR of the model's own output, the provenance digest
    covers every file of the folder, and nothing is written into the model folder."""
    if spelling == "folder":
        card = tmp_path / "card"
        write_sb_folder(card)
        source = str(card)
    else:
        card = snapshot(hub_cache, "speechbrain/sepformer-tiny")
        write_sb_folder(card)
        source = "hf://speechbrain/sepformer-tiny"
    before = folder_digest(card)
    rng = np.random.default_rng(4)
    utterances = {name: speech_like(rng, sb_length(43) * 3) for name in ("u1", "u2")}
    split = write_split(tmp_path / "test", utterances)
    code, _, err = evaluate_cli(capsys, source, "--data", str(split), "--metrics", "si_sdr", cwd=tmp_path)
    assert code == 0, err
    [summary_path] = (tmp_path / "evaluation").rglob("summary.json")
    rows = {row["id"]: row for row in csv.DictReader(open(summary_path.parent / "per_utterance.csv"))}
    model = load_model(source)
    for name, sources in utterances.items():
        with torch.no_grad():
            estimate = model(torch.from_numpy(sources.sum(0))[None])[0].double().numpy()
        best = max(
            np.mean([si_sdr64(estimate[p], sources[i]) for i, p in enumerate(perm)]) for perm in ((0, 1), (1, 0))
        )
        assert float(rows[name]["si_sdr"]) == pytest.approx(best, abs=1e-3)
    provenance = json.loads(summary_path.read_text())
    assert provenance["checkpoint_sha256"] == before == folder_digest(card)


def evaluate_cli(capsys, *args: str, cwd: Path) -> tuple[int, str, str]:
    """``sepkit evaluate ARGS`` in this process, run from ``cwd``."""
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        code = main(["evaluate", *args])
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    return code, out, err
