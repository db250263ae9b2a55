"""Framing rules (issue #15): each model pads and frames its input as the code it
reproduces does, at every input length.

The oracles here are written from the references' formulas, not from sepkit's code:

- Yi Luo's dual-path segmentation (SpeechBrain ``Dual_Path_Model._padding`` /
  ``_Segmentation`` / ``_over_add``; GC3 ``utility/basics.py`` ``pad_segment`` /
  ``split_feature`` / ``merge_feature``): with chunk K and hop P = K/2, append
  ``gap = K - (P + T % K) % K`` zeros, then P zeros at both ends, and read the chunks as
  two non-overlapping tilings, one shifted by P, interleaved.
- GC3's waveform framing (``GC3_network.py`` ``TasNet.pad_input``; the same as the
  Conv-TasNet authors' ``TasNet.pad_signal``, naplab/Conv-TasNet, which Conv-TasNet and
  DPRNN follow): append
  ``rest = win - (hop + T % win) % win`` zeros, then ``hop`` at both ends; crop the
  decoder output to ``hop .. hop + T``.
- SpeechBrain's WSJ0-Mix recipe (``compute_forward``): encode the unpadded mixture, then
  zero-fill the ``(T - kernel) % stride`` samples the encoder did not reach.
- SuDoRM-RF++ (``improved_sudormrf.py`` ``pad_to_appropriate_length``): pad to a multiple
  of ``n = kernel // 2 * 2**depth`` (at least ``n``); the original pads to a multiple of
  ``lcm(kernel // 2, 2**depth)``.

Whole models are checked against a re-implementation of the reference's framing in this
file around sepkit's own layers, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepkit.models import build_model
from sepkit.nn.dual_path import chunk, overlap_add
from sepkit.nn.mask_heads import gated_masks
from sepkit.nn.transformer import sinusoidal_positions

# ---------------------------------------------------------------------------------------
# Oracle: the two-tiling segmentation of the reference code.


def reference_gap(frames: int, chunk_size: int) -> int:
    hop = chunk_size // 2
    return chunk_size - (hop + frames % chunk_size) % chunk_size


def reference_split(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[batch, channels, frames] -> [batch, channels, chunk_size, n_chunks]``."""
    batch, channels, frames = x.shape
    hop = chunk_size // 2
    padded = F.pad(x, (hop, reference_gap(frames, chunk_size) + hop))
    unshifted = padded[..., :-hop].reshape(batch, channels, -1, chunk_size)
    shifted = padded[..., hop:].reshape(batch, channels, -1, chunk_size)
    # Interleave: chunk 2j is unshifted[j], chunk 2j + 1 is shifted[j].
    both = torch.stack((unshifted, shifted), dim=3).reshape(batch, channels, -1, chunk_size)
    return both.transpose(-1, -2)


def reference_merge(chunks: torch.Tensor, frames: int) -> torch.Tensor:
    """Inverse tiling of :func:`reference_split`: ``-> [batch, channels, frames]``."""
    batch, channels, chunk_size, n_chunks = chunks.shape
    hop = chunk_size // 2
    pairs = chunks.transpose(-1, -2).reshape(batch, channels, n_chunks // 2, 2, chunk_size)
    unshifted = pairs[:, :, :, 0].reshape(batch, channels, -1)[..., hop:]
    shifted = pairs[:, :, :, 1].reshape(batch, channels, -1)[..., :-hop]
    return (unshifted + shifted)[..., :frames]


def frame_counts(chunk_size: int) -> list[int]:
    """On the grid, one off it either way, ``frames % K`` in both halves and at K/2,
    shorter than one chunk, one frame."""
    k, p = chunk_size, chunk_size // 2
    return sorted({1, p - 1, p, k - 1, k, k + 1, 2 * k + 1, 2 * k + p - 1, 2 * k + p, 2 * k + p + 1, 3 * k - 1, 3 * k})


@pytest.mark.parametrize("chunk_size", [4, 10, 24])
def test_pad_segment_chunking_is_the_reference_two_tilings(chunk_size: int) -> None:
    hop = chunk_size // 2
    for frames in frame_counts(chunk_size):
        torch.manual_seed(frames)
        x = torch.randn(2, 3, frames, dtype=torch.float64)
        chunks = chunk(x, chunk_size, hop, "pad_segment")
        gap = reference_gap(frames, chunk_size)
        assert 1 <= gap <= chunk_size
        # Padded length T + gap + 2P holds 2 (T + gap + P) / K chunks.
        assert chunks.shape[-1] == 2 * (frames + gap + hop) // chunk_size, frames
        torch.testing.assert_close(chunks, reference_split(x, chunk_size), rtol=0, atol=0)
        y = torch.randn_like(chunks)
        torch.testing.assert_close(
            overlap_add(y, hop, frames, "pad_segment"), reference_merge(y, frames), rtol=0, atol=1e-12
        )


def test_pad_segment_equals_fewest_zeros_only_in_the_first_half_of_a_chunk() -> None:
    # The statement: the two rules agree iff 0 < T mod K < K/2; otherwise the
    # reference has one (or, at T mod K == K/2, two) more chunks.
    chunk_size, hop = 10, 5
    for frames in range(1, 41):
        ours = chunk(torch.zeros(1, 1, frames), chunk_size, hop, "overlap").shape[-1]
        ref = chunk(torch.zeros(1, 1, frames), chunk_size, hop, "pad_segment").shape[-1]
        rem = frames % chunk_size
        if 0 < rem < hop:
            assert ref == ours, frames
        else:
            assert ref - ours == (2 if rem == hop else 1), frames


def test_pad_segment_needs_hop_half_the_chunk() -> None:
    with pytest.raises(ValueError, match="chunk_size == 2 \\* hop"):
        chunk(torch.zeros(1, 1, 20), 10, 4, "pad_segment")


# ---------------------------------------------------------------------------------------
# GC3: waveform and both chunkings, whole model.


GC3_TINY = dict(
    n_filters=16,
    kernel_size=8,
    stride=4,
    n_groups=4,
    context_size=4,
    codec_layers=1,
    codec_hidden=16,
    n_layers=2,
    backbone_hidden=16,
    chunk_size=4,
)


def gc3_reference_masker(masker: nn.Module, rep: torch.Tensor) -> torch.Tensor:
    """GC3's masker with the reference's segmentation for the context codec and the
    GC-DPRNN chunks, around sepkit's own layers. ``[batch, N, frames] -> [batch, n_src,
    N, frames]``."""
    batch, _, frames = rep.shape
    groups, size, context = masker.n_group_slots, masker.group_size, masker.context_size
    feats = masker.input_norm(rep)[:, masker.group_index].reshape(batch * groups, size, frames)
    blocks = reference_split(feats, context)
    n_ctx = blocks.shape[-1]
    items = (
        blocks.reshape(batch, groups, size, context, n_ctx).permute(0, 4, 1, 2, 3).reshape(-1, groups, size, context)
    )
    encoded = items
    for layer in masker.context_encoder:
        encoded = layer(encoded)
    summary = encoded.mean(dim=-1).reshape(batch, n_ctx, groups, size).permute(0, 2, 3, 1)  # [B, G, M, n_ctx]

    dprnn = masker.backbone
    y = reference_split(summary.reshape(batch * groups, size, n_ctx), dprnn.chunk_size)
    grid = y.shape[-2:]
    for group_comm, block in zip(dprnn.group_comms, dprnn.blocks):
        y = block(group_comm(y.reshape(batch, groups, size, *grid)).reshape(y.shape))
    summary = reference_merge(dprnn.output_conv(y), n_ctx).reshape(batch, groups, size, n_ctx)

    decoded = items + summary.permute(0, 3, 1, 2).reshape(batch * n_ctx, groups, size, 1)
    for layer in masker.context_decoder:
        decoded = layer(decoded)
    decoded = decoded.reshape(batch, n_ctx, groups, size, context).permute(0, 2, 3, 4, 1)
    out = reference_merge(decoded.reshape(batch * groups, size, context, n_ctx), frames)
    masks = torch.relu(masker.mask_conv(out)).reshape(batch, groups, masker.n_src, size, frames).transpose(1, 2)
    return masks.reshape(batch, masker.n_src, groups * size, frames)


def gc3_reference(model: nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """``TasNet.forward`` of yluo42/GC3 with sepkit's layers: ``[batch, T] -> [batch,
    n_src, T]``."""
    win, hop = model.encoder.kernel_size, model.encoder.stride
    length = wav.shape[-1]
    rest = win - (hop + length % win) % win
    rep = model.encoder(F.pad(wav, (hop, rest + hop)))
    assert rep.shape[-1] == (length + rest) // hop + 1
    est = model.decoder(gc3_reference_masker(model.masker, rep) * rep.unsqueeze(1))
    return est[..., hop : hop + length]


def test_gc3_equals_the_reference_framing_at_every_length() -> None:
    torch.manual_seed(0)
    model = build_model("gc3", **GC3_TINY).double().eval()
    win = GC3_TINY["kernel_size"]
    # Frames (T + rest) / hop + 1 sweep the chunk phases of both segmentations; lengths
    # on the window grid, one sample off it either way, and shorter than one window.
    lengths = sorted({1, 3, win - 1, win, win + 1, 2 * win, 2 * win + 2, 45, 64, 65, 71, 101, 128, 130})
    with torch.no_grad():
        for length in lengths:
            wav = torch.randn(2, length, dtype=torch.float64)
            torch.testing.assert_close(model(wav), gc3_reference(model, wav), rtol=1e-10, atol=1e-10, msg=str(length))


def test_gc3_rejects_framing_the_reference_cannot_do() -> None:
    with pytest.raises(ValueError, match="kernel_size == 2 \\* stride"):
        build_model("gc3", **{**GC3_TINY, "stride": 3})
    with pytest.raises(ValueError, match="chunk_size must be even"):
        build_model("gc3", **{**GC3_TINY, "chunk_size": 5})


# ---------------------------------------------------------------------------------------
# SepFormer: SpeechBrain's recipe framing and chunking, whole model.


SEPFORMER_TINY = dict(
    n_filters=16, d_model=8, n_heads=2, d_ffn=16, n_repeats=1, n_intra_layers=1, n_inter_layers=1, chunk_size=10, hop=5
)


def sepformer_reference(model: nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """SpeechBrain's recipe ``compute_forward`` + ``Dual_Path_Model.forward`` with
    sepkit's layers: ``[batch, T >= kernel] -> [batch, n_src, T]``."""
    kernel, stride = model.encoder.kernel_size, model.encoder.stride
    length = wav.shape[-1]
    rep = model.encoder(wav)  # unpadded: the conv drops (T - kernel) % stride samples
    masker = model.masker
    batch, _, frames = rep.shape
    x = reference_split(masker.input_conv(masker.input_norm(rep)), masker.chunk_size)
    for block in masker.blocks:
        x = block(x)
    x = masker.output_conv(masker.output_act(x))
    _, _, k, s = x.shape
    x = reference_merge(x.reshape(batch * masker.n_src, masker.d_model, k, s), frames)
    masks = torch.relu(gated_masks(x, masker.output_tanh, masker.output_gate, masker.mask_conv))
    est = model.decoder(masks.reshape(batch, masker.n_src, -1, frames) * rep.unsqueeze(1))
    assert est.shape[-1] == length - (length - kernel) % stride
    return F.pad(est, (0, length - est.shape[-1]))


def test_sepformer_equals_speechbrain_framing_at_every_length() -> None:
    torch.manual_seed(0)
    model = build_model("sepformer", **SEPFORMER_TINY).double().eval()
    kernel, stride = model.encoder.kernel_size, model.encoder.stride
    with torch.no_grad():
        for frames in frame_counts(SEPFORMER_TINY["chunk_size"]):
            for off_grid in (0, 1, stride - 1):
                length = (frames - 1) * stride + kernel + off_grid
                wav = torch.randn(2, length, dtype=torch.float64)
                est = model(wav)
                torch.testing.assert_close(est, sepformer_reference(model, wav), rtol=1e-10, atol=1e-10)
                # The tail the encoder does not reach is zero, as in the reference.
                assert not est[..., length - off_grid :].any()


def test_sepformer_pad_option_estimates_the_tail() -> None:
    torch.manual_seed(0)
    model = build_model("sepformer", **SEPFORMER_TINY, framing="end").eval()
    with torch.no_grad():
        est = model(torch.randn(1, 16 + 8 * 20 + 5))
    assert est[..., -5:].abs().min() > 0
    with pytest.raises(ValueError, match="framing"):
        build_model("sepformer", **SEPFORMER_TINY, framing="hop_padded")


def test_sepformer_shorter_than_one_window_is_padded_to_one_window() -> None:
    # The reference cannot encode fewer samples than one window; sepkit pads to one.
    torch.manual_seed(0)
    model = build_model("sepformer", **SEPFORMER_TINY).double().eval()
    wav = torch.randn(1, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(wav), sepformer_reference(model, F.pad(wav, (0, 9)))[..., :7])


def test_positions_table_is_built_in_float32() -> None:
    # SpeechBrain's PositionalEncoding table is float32 (converted to float64 with the
    # model): the float64 table holds exactly the float32 values, which differ from the
    # float64 formula by more than float64 rounding at long positions.
    length, d_model = 2000, 16
    table64 = sinusoidal_positions(length, d_model, torch.zeros((), dtype=torch.float64))
    table32 = sinusoidal_positions(length, d_model, torch.zeros((), dtype=torch.float32))
    assert table64.dtype == torch.float64
    torch.testing.assert_close(table64, table32.double(), rtol=0, atol=0)
    position = torch.arange(length, dtype=torch.float64)[:, None]
    angle = position / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    exact = torch.stack((angle.sin(), angle.cos()), dim=-1).reshape(length, d_model)
    error = (table64 - exact).abs().max().item()
    assert 1e-7 < error < 1e-3


# ---------------------------------------------------------------------------------------
# SuDoRM-RF and SuDoRM-RF++: padding multiple and input normalisation.


SUDORMRF_TINY = dict(n_filters=32, bottleneck=16, hidden_channels=32, n_blocks=2, upsampling_depth=3)


def reference_sudormrf_padded(length: int, kernel: int, depth: int, improved: bool) -> int:
    if improved:
        n = kernel // 2 * 2**depth
        return n if length < n else math.ceil(length / n) * n
    lcm = math.lcm(kernel // 2, 2**depth)
    return length + (lcm - length % lcm) % lcm


@pytest.mark.parametrize("improved", [False, True])
def test_sudormrf_pads_to_its_reference_multiple(improved: bool) -> None:
    torch.manual_seed(0)
    model = build_model("sudormrf", **SUDORMRF_TINY, improved=improved, normalize_input=False).double().eval()
    kernel, depth = model.encoder.kernel_size, SUDORMRF_TINY["upsampling_depth"]
    seen: list[int] = []
    model.encoder.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[-1]))
    multiple = reference_sudormrf_padded(1, kernel, depth, improved)
    assert multiple == (80 if improved else 40)
    for length in (1, multiple - 1, multiple, multiple + 1, 2 * multiple + 37, 5 * multiple):
        wav = torch.randn(1, length, dtype=torch.float64)
        padded = reference_sudormrf_padded(length, kernel, depth, improved)
        with torch.no_grad():
            est = model(wav)
            # Reference: zero-pad on the right, then the encoder's own kernel // 2 padding.
            expected = model.separate_padded(F.pad(wav, (0, padded - length)))[..., :length]
        assert seen.pop() == padded + 2 * (kernel // 2), length
        torch.testing.assert_close(est, expected, rtol=0, atol=0)


def test_sudormrf_normalises_with_the_unbiased_std() -> None:
    torch.manual_seed(0)
    model = build_model("sudormrf", **SUDORMRF_TINY, improved=True).double().eval()
    wav = 3 * torch.randn(2, 200, dtype=torch.float64) + 0.5
    # The reference runner's normalize_tensor_wav: unbiased std + 1e-8.
    mean = wav.mean(-1, keepdim=True)
    std = torch.from_numpy(wav.numpy().std(-1, ddof=1, keepdims=True))
    with torch.no_grad():
        model.normalize_input = False
        normalised = model((wav - mean) / (std + 1e-8))
        model.normalize_input = True
        est = model(wav)
    expected = normalised * (std + 1e-8)[:, :, None] + mean[:, :, None] / 2
    torch.testing.assert_close(est, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 1, dtype=torch.float64))).all()


# ---------------------------------------------------------------------------------------
# Conv-TasNet and DPRNN: the authors' TasNet front end (naplab/Conv-TasNet
# ``TasNet.pad_signal`` and the crop in ``TasNet.forward``; the same in GC3's TasNet),
# and for DPRNN the authors' chunking (yluo42/TAC ``DPRNN_base.split_feature`` /
# ``merge_feature``), i.e. the two-tiling oracle above.


def authors_tasnet(model: nn.Module, wav: torch.Tensor, masker) -> torch.Tensor:
    """``rest = win - (stride + T % win) % win`` zeros appended, ``stride`` zeros at both
    ends, masks from ``masker``, decoder output ``[stride : -(rest + stride)]``."""
    win, stride = model.encoder.kernel_size, model.encoder.stride
    rest = win - (stride + wav.shape[-1] % win) % win
    rep = model.encoder(F.pad(wav, (stride, rest + stride)))
    est = model.decoder(masker(rep) * rep.unsqueeze(1))
    return est[..., stride : -(rest + stride)]


def authors_dprnn_masker(masker: nn.Module, rep: torch.Tensor) -> torch.Tensor:
    """sepkit's DPRNN layers around the authors' split/merge of the chunks."""
    batch, _, frames = rep.shape
    x = reference_split(masker.bottleneck(masker.input_norm(rep)), masker.chunk_size)
    for block in masker.blocks:
        x = block(x)
    x = masker.output_conv(masker.output_act(x))
    streams = x.reshape(batch * masker.n_src, masker.bottleneck_channels, *x.shape[-2:])
    merged = reference_merge(streams, frames)
    masks = gated_masks(merged, masker.output_tanh, masker.output_gate, masker.mask_conv)
    return torch.sigmoid(masks).reshape(batch, masker.n_src, masker.n_filters, frames)


# Shorter than one window (1, 7), on the window grid, one sample either side, and lengths
# whose frame counts put ``frames % K`` in both halves of a DPRNN chunk (K = 10).
TASNET_LENGTHS = [1, 7, 8, 9, 15, 16, 17, 39, 40, 41, 44, 52, 63, 64, 65, 101, 130]


def test_conv_tasnet_default_equals_the_authors_framing_at_every_length() -> None:
    torch.manual_seed(0)
    config = dict(n_filters=16, kernel_size=8, stride=4, bottleneck=8, hidden=16, skip_channels=8, n_blocks=2)
    model = build_model("conv_tasnet", n_repeats=1, **config).double().eval()
    assert model.framing == "hop_padded"
    with torch.no_grad():
        for length in TASNET_LENGTHS:
            wav = torch.randn(2, length, dtype=torch.float64)
            expected = authors_tasnet(model, wav, model.masker)
            torch.testing.assert_close(model(wav), expected, rtol=1e-10, atol=1e-10, msg=str(length))


def test_dprnn_default_equals_the_authors_framing_at_every_length() -> None:
    torch.manual_seed(0)
    config = dict(n_filters=16, kernel_size=4, stride=2, bottleneck=8, hidden_size=8, n_blocks=2, chunk_size=10, hop=5)
    model = build_model("dprnn", **config).double().eval()
    assert (model.framing, model.masker.chunk_padding) == ("hop_padded", "pad_segment")
    frames_mod_chunk = set()
    with torch.no_grad():
        for length in TASNET_LENGTHS:
            wav = torch.randn(2, length, dtype=torch.float64)
            expected = authors_tasnet(model, wav, lambda rep: authors_dprnn_masker(model.masker, rep))
            torch.testing.assert_close(model(wav), expected, rtol=1e-10, atol=1e-10, msg=str(length))
            rest = 4 - (2 + length % 4) % 4
            frames_mod_chunk.add(((length + rest) // 2 + 1) % 10)
    # Frame counts below, at and above a chunk boundary, in both halves of a chunk.
    assert {0, 2, 4, 6, 8} <= frames_mod_chunk


def test_dprnn_and_conv_tasnet_keep_sepkit_rules_as_options() -> None:
    dprnn = build_model("dprnn", chunk_padding="overlap", framing="end")
    assert (dprnn.framing, dprnn.masker.chunk_padding) == ("end", "overlap")
    # Geometries the authors' code never uses fall back to sepkit's rules.
    odd = build_model("dprnn", kernel_size=16, stride=4, chunk_size=15, hop=5)
    assert (odd.framing, odd.masker.chunk_padding) == ("end", "overlap")
    assert build_model("conv_tasnet", kernel_size=20, stride=8).framing == "end"
