"""SepFormer (Subakan et al., ICASSP 2021): dual-path transformers on chunked frames."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder, Framing
from sepkit.models.registry import register_model
from sepkit.nn.dual_path import CHUNK_PADDINGS, ChunkPadding, chunk, overlap_add
from sepkit.nn.mask_heads import gated_head_convs, gated_masks
from sepkit.nn.norms import make_norm
from sepkit.nn.transformer import TransformerStack


class SepFormerBlock(nn.Module):
    """One SepFormer block on ``[batch, d_model, chunk_size, n_chunks]`` (same out):
    intra-chunk transformer -> norm (+ skip around it), inter-chunk transformer -> norm
    + residual."""

    def __init__(
        self, intra: TransformerStack, inter: TransformerStack, d_model: int, norm: str, skip_around_intra: bool
    ) -> None:
        super().__init__()
        self.intra = intra
        self.intra_norm = make_norm(norm, d_model)
        self.inter = inter
        self.inter_norm = make_norm(norm, d_model)
        self.skip_around_intra = skip_around_intra

    def forward(self, x: Tensor) -> Tensor:
        batch, d_model, chunk_size, n_chunks = x.shape
        intra = x.permute(0, 3, 2, 1).reshape(batch * n_chunks, chunk_size, d_model)
        intra = self.intra(intra).reshape(batch, n_chunks, chunk_size, d_model).permute(0, 3, 2, 1)
        intra = self.intra_norm(intra)
        if self.skip_around_intra:
            intra = intra + x
        inter = intra.permute(0, 2, 3, 1).reshape(batch * chunk_size, n_chunks, d_model)
        inter = self.inter(inter).reshape(batch, chunk_size, n_chunks, d_model).permute(0, 3, 1, 2)
        return self.inter_norm(inter) + intra


class SepFormerMasker(nn.Module):
    """gLN -> 1x1 (no bias) -> chunk -> ``n_repeats`` SepFormer blocks -> PReLU -> 1x1
    Conv2d to ``n_src`` streams -> overlap-add -> tanh/sigmoid gated 1x1 convs -> 1x1
    (no bias) back to ``n_filters`` -> ReLU masks.

    Input ``[batch, n_filters, frames]``; output masks ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        d_model: int = 256,
        n_heads: int = 8,
        d_ffn: int = 1024,
        n_repeats: int = 2,
        n_intra_layers: int = 8,
        n_inter_layers: int = 8,
        chunk_size: int = 250,
        hop: int = 125,
        dropout: float = 0.0,
        norm: str = "gLN",
        norm_first: bool = True,
        positional: bool = True,
        skip_around_intra: bool = True,
        chunk_padding: ChunkPadding = "pad_segment",
    ) -> None:
        super().__init__()
        if not 0 < hop <= chunk_size:
            raise ValueError(f"SepFormer: need 0 < hop <= chunk_size, got hop={hop}, chunk_size={chunk_size}")
        if chunk_padding not in CHUNK_PADDINGS:
            raise ValueError(f"SepFormer: chunk_padding must be one of {CHUNK_PADDINGS}, got {chunk_padding!r}")
        if chunk_padding == "pad_segment" and chunk_size != 2 * hop:
            raise ValueError(
                f"SepFormer: chunk_padding 'pad_segment' needs chunk_size == 2 * hop, got {chunk_size} and {hop}"
            )
        self.n_src = n_src
        self.n_filters = n_filters
        self.d_model = d_model
        self.chunk_size = chunk_size
        self.hop = hop
        self.chunk_padding = chunk_padding
        self.input_norm = make_norm(norm, n_filters)
        self.input_conv = nn.Conv1d(n_filters, d_model, 1, bias=False)

        def stack(n_layers: int) -> TransformerStack:
            return TransformerStack(n_layers, d_model, n_heads, d_ffn, dropout, norm_first, positional)

        self.blocks = nn.ModuleList(
            SepFormerBlock(stack(n_intra_layers), stack(n_inter_layers), d_model, norm, skip_around_intra)
            for _ in range(n_repeats)
        )
        self.output_act = nn.PReLU()
        self.output_conv = nn.Conv2d(d_model, n_src * d_model, 1)
        self.output_tanh, self.output_gate, self.mask_conv = gated_head_convs(d_model, n_filters)

    def forward(self, rep: Tensor) -> Tensor:
        batch, _, frames = rep.shape
        x = chunk(self.input_conv(self.input_norm(rep)), self.chunk_size, self.hop, self.chunk_padding)
        for block in self.blocks:
            x = block(x)
        x = self.output_conv(self.output_act(x))
        _, _, chunk_size, n_chunks = x.shape
        x = overlap_add(
            x.reshape(batch * self.n_src, self.d_model, chunk_size, n_chunks), self.hop, frames, self.chunk_padding
        )
        masks = torch.relu(gated_masks(x, self.output_tanh, self.output_gate, self.mask_conv))
        return masks.reshape(batch, self.n_src, self.n_filters, frames)


@register_model(
    "sepformer",
    small_config=dict(
        n_filters=16,
        d_model=8,
        n_heads=2,
        d_ffn=16,
        n_repeats=1,
        n_intra_layers=1,
        n_inter_layers=1,
        chunk_size=10,
        hop=5,
    ),
)
class SepFormer(EncoderMaskerDecoder):
    """SepFormer. Defaults are the paper's model (SpeechBrain's WSJ0-2mix recipe): encoder
    256 filters, kernel 16, stride 8, ReLU; chunk 250, hop 125; 2 repeats of 8 intra + 8
    inter pre-norm transformer layers (d_model 256, 8 heads, feed-forward 1024, ReLU,
    sinusoidal positions); ReLU masks; shared linear decoder: 25,679,361 parameters.

    Framing follows SpeechBrain (``speechbrain/speechbrain``), so that converted weights
    give the reference's outputs at every input length:

    - waveform (``framing="truncate"``, default): as the WSJ0-Mix recipe
      (``recipes/WSJ0Mix/separation/train.py``, ``Separation.compute_forward``), the
      unpadded mixture is encoded, so the last ``(time - kernel_size) % stride`` samples
      are dropped and that tail of every estimate is zero. ``framing="end"`` instead pads
      the mixture onto the frame grid and estimates every sample: better for new models,
      not the reference's numbers. See :class:`EncoderMaskerDecoder`.
    - chunks (``chunk_padding="pad_segment"``, default): ``Dual_Path_Model._padding`` /
      ``_Segmentation`` / ``_over_add`` in ``speechbrain/lobes/models/dual_path.py``: with
      K = chunk_size, P = K/2, ``K - (P + frames % K) % K`` zeros at the end, then P at
      both ends. ``"overlap"`` pads the fewest zeros. See :mod:`sepkit.nn.dual_path`.
    - positions: the sinusoidal table is computed in float32, as SpeechBrain's
      ``PositionalEncoding`` builds it, also when the model runs in float64.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters, kernel_size, stride: encoder/decoder.
        d_model, n_heads, d_ffn: transformer sizes.
        n_repeats: SepFormer blocks. n_intra_layers, n_inter_layers: layers per stack.
        chunk_size, hop: dual-path segmentation (frames).
        dropout: transformer dropout (0 in the paper).
        norm: norm after each stack ("gLN").
        norm_first: pre-norm transformer layers (paper) or post-norm.
        positional: add sinusoidal positions at the input of every stack.
        skip_around_intra: residual connection around the intra stack.
        chunk_padding: "pad_segment" (SpeechBrain, default), "overlap" or "chunk".
        framing: "truncate" (SpeechBrain, default) or "end" (pad onto the grid).
        sample_rate: sample rate the model is trained at.
    """

    ssc_presets = {
        "ffn": {
            "include": [
                "masker.blocks.*.intra.layers.*.ffn.linear_in",
                "masker.blocks.*.intra.layers.*.ffn.linear_out",
                "masker.blocks.*.inter.layers.*.ffn.linear_in",
                "masker.blocks.*.inter.layers.*.ffn.linear_out",
            ]
        }
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 256,
        kernel_size: int = 16,
        stride: int = 8,
        d_model: int = 256,
        n_heads: int = 8,
        d_ffn: int = 1024,
        n_repeats: int = 2,
        n_intra_layers: int = 8,
        n_inter_layers: int = 8,
        chunk_size: int = 250,
        hop: int = 125,
        dropout: float = 0.0,
        norm: str = "gLN",
        norm_first: bool = True,
        positional: bool = True,
        skip_around_intra: bool = True,
        chunk_padding: ChunkPadding = "pad_segment",
        framing: Framing = "truncate",
        sample_rate: int = 8000,
    ) -> None:
        if framing not in ("truncate", "end"):
            raise ValueError(f"SepFormer: framing must be 'truncate' or 'end', got {framing!r}")
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride, activation="relu"),
            masker=SepFormerMasker(
                n_filters,
                n_src,
                d_model=d_model,
                n_heads=n_heads,
                d_ffn=d_ffn,
                n_repeats=n_repeats,
                n_intra_layers=n_intra_layers,
                n_inter_layers=n_inter_layers,
                chunk_size=chunk_size,
                hop=hop,
                dropout=dropout,
                norm=norm,
                norm_first=norm_first,
                positional=positional,
                skip_around_intra=skip_around_intra,
                chunk_padding=chunk_padding,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride),
            n_src=n_src,
            sample_rate=sample_rate,
            framing=framing,
        )
