"""Stateful, causal separation of a stream that arrives in blocks of any size.

:class:`StreamingSeparator` runs a causal model (Conv-TasNet with ``causal=True`` and
cLN, or DPRNN with unidirectional intra- and inter-chunk RNNs and cLN) on blocks of
``N`` samples and returns ``N`` samples per source for every block, delayed by a fixed
latency. Its output equals the offline model's on the whole signal, shifted by that
latency, up to float rounding.

Latency. The encoder frames the (edge-padded) input with window ``L`` and hop ``S``;
the maskers supported here are causal frame by frame (the mask of frame ``t`` reads
frames ``<= t``), and the decoder's overlap-add makes output sample ``p`` final once
every frame that covers it has been seen. After ``n`` samples the frames complete so
far cover, at the worst phase of ``n`` against the hop, every output sample before
``n - (L - 1)``. So a fixed latency of

    ``D = L - 1`` samples (``latency``; e.g. 15 samples = 1.9 ms at 8 kHz for L=16)

is always met, whatever the block size and framing, and no smaller fixed one is. The
stream returns sample ``i`` of the offline output as sample ``i + D`` of its output
(the first ``D`` samples are zeros); :meth:`StreamingSeparator.flush` returns the last
``D``. A listener waits at most ``N - 1 + D`` samples, plus compute time, for the
output of an input sample (the block has to fill first).

State carried between blocks (``[batch, ...]``, reset by :meth:`StreamingSeparator.reset`):
the encoder's input samples not yet framed, every dilated causal conv's last
``(P - 1) * dilation`` inputs (ring buffers), the RNN hidden states (DPRNN: the intra
RNN's per open chunk, the inter RNN's per chunk position), the decoder's overlap-add
tail of ``L - S`` samples, and the output queue that realises the latency.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepkit.models.conv_tasnet import TCNMasker
from sepkit.models.dprnn import DPRNNMasker
from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.nn.depthwise import DepthwiseConv1d
from sepkit.nn.dual_path import chunk_padding
from sepkit.nn.mask_heads import gated_masks
from sepkit.nn.norms import ChannelwiseLayerNorm

# Norms that act on each frame on its own (no statistics over time).
FRAME_NORMS = (ChannelwiseLayerNorm, nn.Identity)


class StreamingError(ValueError):
    """The model cannot be run as a stream; the one-line message names it and says why."""


def _model_name(model: nn.Module) -> str:
    return f"{getattr(model, 'model_name', type(model).__name__)} ({type(model).__name__})"


def _is_pointwise(module: nn.Module | None, conv_type: type[nn.Module] = nn.Conv1d) -> bool:
    """A plain 1x1 conv (or linear layer): per frame, so it streams as is. SSC layers
    swapped in by config shift channels along time and are refused."""
    if module is None:
        return True
    if conv_type is nn.Linear:
        return type(module) is nn.Linear
    return type(module) is conv_type and all(k == 1 for k in module.kernel_size)


def _tcn_problem(masker: TCNMasker) -> str | None:
    norms = [masker.input_norm] + [n for block in masker.blocks for n in (block.norm1, block.norm2)]
    if not all(isinstance(norm, FRAME_NORMS) for norm in norms):
        kind = next(type(n).__name__ for n in norms if not isinstance(n, FRAME_NORMS))
        return f"its norm is {kind}, which uses statistics over time; streaming needs norm='cLN'"
    if not all(block.causal for block in masker.blocks):
        return "its dilated convolutions are not causal; streaming needs causal=True (with norm='cLN')"
    convs = [masker.bottleneck, masker.mask_conv]
    convs += [c for block in masker.blocks for c in (block.in_conv, block.res_conv, block.skip_conv)]
    if not all(_is_pointwise(conv) for conv in convs):
        return "a 1x1 convolution was swapped for a layer that mixes time steps (SSC); that does not stream"
    if not all(type(block.depthwise) is DepthwiseConv1d for block in masker.blocks):
        return "a depthwise convolution was swapped for another layer; that does not stream"
    return None


def _dprnn_problem(masker: DPRNNMasker) -> str | None:
    blocks = list(masker.blocks)
    norms = [masker.input_norm] + [n for block in blocks for n in (block.intra_norm, block.inter_norm)]
    if not all(isinstance(norm, FRAME_NORMS) for norm in norms):
        kind = next(type(n).__name__ for n in norms if not isinstance(n, FRAME_NORMS))
        return f"its norm is {kind}, which uses statistics over time; streaming needs norm='cLN'"
    if any(block.intra_rnn.bidirectional for block in blocks):
        return "its intra-chunk RNN is bidirectional (reads the future); streaming needs bidirectional_intra=False"
    if any(block.inter_rnn.bidirectional for block in blocks):
        return "its inter-chunk RNN is bidirectional (reads the future); streaming needs bidirectional=False"
    pointwise = _is_pointwise(masker.bottleneck) and _is_pointwise(masker.output_conv, nn.Conv2d)
    pointwise &= all(_is_pointwise(b.intra_proj, nn.Linear) and _is_pointwise(b.inter_proj, nn.Linear) for b in blocks)
    if masker.output_head == "gated":
        pointwise &= all(_is_pointwise(c) for c in (masker.output_tanh, masker.output_gate, masker.mask_conv))
    if not pointwise:
        return "a projection was swapped for a layer that mixes time steps (SSC); that does not stream"
    return None


def streaming_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be streamed by :class:`StreamingSeparator`, or None if it can."""
    if not isinstance(model, EncoderMaskerDecoder) or not isinstance(model.masker, TCNMasker | DPRNNMasker):
        return "only causal Conv-TasNet and unidirectional DPRNN have a streaming implementation"
    if type(model.encoder) is not ConvEncoder or type(model.decoder) is not ConvDecoder:
        return "its encoder or decoder is not the plain learned filterbank"
    if model.encoder.stride > model.encoder.kernel_size:
        return f"its encoder hop {model.encoder.stride} exceeds its window {model.encoder.kernel_size}"
    if isinstance(model.masker, TCNMasker):
        return _tcn_problem(model.masker)
    return _dprnn_problem(model.masker)


def check_streamable(model: nn.Module) -> None:
    """Raise :class:`StreamingError` naming the model and the reason if it cannot stream."""
    problem = streaming_problem(model)
    if problem is not None:
        raise StreamingError(f"model {_model_name(model)} cannot stream: {problem}")


def _pointwise(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 ``conv`` on ``[batch, channels, frames]`` as a matmul: the same sums, without
    the parallel conv path that a batched call of a few frames takes and that costs
    milliseconds per call on a loaded CPU."""
    weight = conv.weight.reshape(conv.weight.shape[0], -1)
    return F.linear(x.transpose(1, 2), weight, conv.bias).transpose(1, 2)


class _CausalDilatedContext:
    """A causal depthwise dilated conv (``sepkit.nn.tcn.TemporalBlock``'s) over a stream.

    A ring buffer holds the last ``R = (P - 1) * dilation`` input frames ``[batch,
    channels, R]``; each call reads its taps from the buffer and the new frames and
    overwrites the oldest ``f`` buffer frames with the new ones, so a one-frame call
    costs ``O(P)`` slices, not a copy of ``R`` frames. Taps are summed in the order
    :class:`~sepkit.nn.depthwise.DepthwiseConv1d` sums them, so the arithmetic is the
    offline conv's.
    """

    def __init__(self, conv: DepthwiseConv1d) -> None:
        self.weight = conv.weight.squeeze(1)  # [channels, P]
        self.bias = conv.bias
        self.dilation = conv.dilation[0]
        self.taps = conv.kernel_size[0]
        self.size = (self.taps - 1) * self.dilation
        self.buffer: Tensor | None = None
        self.oldest = 0  # ring index of the oldest buffered frame

    def reset(self) -> None:
        self.buffer = None
        self.oldest = 0

    def _ring_slices(self, first: int, count: int) -> list[tuple[slice, slice]]:
        """``(destination offset slice, ring slice)`` pairs covering buffer frames
        ``first .. first + count`` (0 = oldest)."""
        start = (self.oldest + first) % self.size
        head = min(count, self.size - start)
        pairs = [(slice(0, head), slice(start, start + head))]
        if head < count:
            pairs.append((slice(head, count), slice(0, count - head)))
        return pairs

    def __call__(self, x: Tensor) -> Tensor:
        """New frames ``[batch, channels, f]`` -> conv output for them ``[batch, channels, f]``."""
        frames = x.shape[-1]
        if self.buffer is None:
            self.buffer = x.new_zeros(x.shape[0], x.shape[1], self.size)
        out = x.new_zeros(x.shape)
        if self.bias is not None:
            out += self.bias[:, None]
        for tap in range(self.taps):
            # Output frame i reads input frame i - shift (negative: from the buffer).
            shift = (self.taps - 1 - tap) * self.dilation
            weight = self.weight[:, tap, None]
            from_buffer = min(shift, frames)
            if from_buffer:
                for dst, src in self._ring_slices(self.size - shift, from_buffer):
                    out[..., dst].addcmul_(self.buffer[..., src], weight)
            if frames > shift:
                out[..., shift:].addcmul_(x[..., : frames - shift], weight)
        self._remember(x)
        return out

    def _remember(self, x: Tensor) -> None:
        frames = x.shape[-1]
        if self.size == 0:
            return
        if frames >= self.size:
            self.buffer.copy_(x[..., frames - self.size :])
            self.oldest = 0
            return
        for dst, src in self._ring_slices(0, frames):
            self.buffer[..., src] = x[..., dst]
        self.oldest = (self.oldest + frames) % self.size


class _TCNStream:
    """:class:`~sepkit.models.conv_tasnet.TCNMasker` frame by frame: the same layers in
    the same order, with each block's dilated conv fed from its ring buffer.

    ``[batch, n_filters, f]`` new encoder frames -> ``[batch, n_src, n_filters, f]`` masks.
    """

    def __init__(self, masker: TCNMasker) -> None:
        self.masker = masker
        self.contexts = [_CausalDilatedContext(block.depthwise) for block in masker.blocks]

    def reset(self) -> None:
        for context in self.contexts:
            context.reset()

    def __call__(self, rep: Tensor) -> Tensor:
        masker = self.masker
        x = _pointwise(masker.bottleneck, masker.input_norm(rep))
        skip_sum: Tensor | float = 0.0
        for block, context in zip(masker.blocks, self.contexts):
            y = block.norm1(block.act1(_pointwise(block.in_conv, x)))
            y = block.norm2(block.act2(context(y)))
            if block.skip_conv is not None:
                skip_sum = skip_sum + _pointwise(block.skip_conv, y)
            x = x + _pointwise(block.res_conv, y)
        out = skip_sum if masker.use_skip else x
        masks = masker.mask_act(_pointwise(masker.mask_conv, masker.output_act(out)))
        return masks.view(masks.shape[0], masker.n_src, masker.n_filters, -1)


# Up to this many steps, a recurrent layer is run step by step with matmuls here
# instead of the fused nn.LSTM/GRU/RNN call, whose fixed per-call cost (tens of ms on a
# loaded CPU) dwarfs a few steps of a small layer.
MAX_STEPWISE_STEPS = 8


def _run_rnn(rnn: nn.RNNBase, x: Tensor, state: Tensor | tuple[Tensor, Tensor] | None):
    """``rnn`` (one layer, one direction, either layout) on ``x`` ``[batch, steps, C]`` from
    ``state`` (``None``: zeros) -> ``(outputs [batch, steps, H], state)``, the module's
    result up to rounding (PyTorch's gate equations, gate order i, f, g, o for LSTM and
    r, z, n for GRU)."""
    batch, steps, _ = x.shape
    if steps > MAX_STEPWISE_STEPS:
        if rnn.batch_first:
            return rnn(x, state)
        out, state = rnn(x.transpose(0, 1), state)
        return out.transpose(0, 1), state
    hidden_size = rnn.hidden_size
    is_lstm = isinstance(rnn, nn.LSTM)
    if state is None:
        zeros = x.new_zeros(1, batch, hidden_size)
        state = (zeros, zeros) if is_lstm else zeros
    h, c = (state[0][0], state[1][0]) if is_lstm else (state[0], None)
    projected = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0 if rnn.bias else None)  # all steps at once
    outputs = []
    for step in range(steps):
        recurrent = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0 if rnn.bias else None)
        inputs = projected[:, step]
        if is_lstm:
            i, f, g, o = (inputs + recurrent).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif isinstance(rnn, nn.GRU):
            input_r, input_z, input_n = inputs.chunk(3, dim=-1)
            hidden_r, hidden_z, hidden_n = recurrent.chunk(3, dim=-1)
            r = torch.sigmoid(input_r + hidden_r)
            z = torch.sigmoid(input_z + hidden_z)
            n = torch.tanh(input_n + r * hidden_n)
            h = (1 - z) * n + z * h
        else:
            h = (torch.tanh if rnn.nonlinearity == "tanh" else torch.relu)(inputs + recurrent)
        outputs.append(h)
    out = torch.stack(outputs, dim=1)
    return out, ((h[None], c[None]) if is_lstm else h[None])


class _DPRNNStream:
    """:class:`~sepkit.models.dprnn.DPRNNMasker` (unidirectional RNNs, per-frame norms)
    frame by frame.

    Chunk ``c`` covers padded frames ``[c * hop, c * hop + K)``, where the padding is
    the ``left`` zero frames the offline chunking puts before the first frame (the
    right padding never reaches a real frame's output: everything is causal). New
    frames are run through every chunk that contains them, in chunk order; per block:

    - the intra RNN continues chunk ``c`` from its state after the chunk's earlier
      positions (one state per chunk still open, dropped when the chunk ends);
    - the inter RNN takes one step at each new position ``k`` from the state that
      chunk ``c - 1`` left at position ``k`` (one state per position, ``[1, batch, K, H]``).

    The head's 1x1 conv is applied per chunk and the chunks are overlap-added, as the
    offline ``overlap_add``; a frame is final once all chunks containing it have seen it,
    which is at once. ``[batch, n_filters, f]`` -> ``[batch, n_src, n_filters, f]``.
    """

    def __init__(self, masker: DPRNNMasker) -> None:
        self.masker = masker
        self.chunk_size, self.hop = masker.chunk_size, masker.hop
        # The left padding of the offline chunking does not depend on the frame count.
        self.left = chunk_padding(1, self.chunk_size, self.hop, masker.chunk_padding)[0]
        self.is_lstm = [isinstance(block.inter_rnn, nn.LSTM) for block in masker.blocks]
        self.reset()

    def reset(self) -> None:
        self.seen = 0  # padded frames processed so far
        self.intra_states: list[dict[int, Tensor | tuple[Tensor, Tensor]]] = [{} for _ in self.masker.blocks]
        self.inter_states: list[list[Tensor] | None] = [None for _ in self.masker.blocks]

    def _inter_state(self, index: int, batch: int, like: Tensor) -> list[Tensor]:
        if self.inter_states[index] is None:
            hidden = self.masker.blocks[index].inter_rnn.hidden_size
            count = 2 if self.is_lstm[index] else 1
            self.inter_states[index] = [like.new_zeros(1, batch, self.chunk_size, hidden) for _ in range(count)]
        return self.inter_states[index]

    def _block(self, index: int, chunk_index: int, first: int, x: Tensor) -> Tensor:
        """One dual-path block on positions ``first .. first + n`` of one chunk, ``[batch, C, n]``."""
        block = self.masker.blocks[index]
        batch, channels, count = x.shape
        last = first + count
        # Intra: continue this chunk's sequence.
        intra, state = _run_rnn(block.intra_rnn, x.transpose(1, 2), self.intra_states[index].pop(chunk_index, None))
        if last < self.chunk_size:
            self.intra_states[index][chunk_index] = state
        intra = block.intra_proj(block.dropout(intra))
        x = x + block.intra_norm(intra.transpose(1, 2))
        # Inter: one step of the sequence over chunks at each of these positions.
        stored = self._inter_state(index, batch, x)
        previous = tuple(s[:, :, first:last].reshape(1, batch * count, -1) for s in stored)
        inter, state = _run_rnn(
            block.inter_rnn,
            x.permute(0, 2, 1).reshape(batch * count, 1, channels),
            previous if self.is_lstm[index] else previous[0],
        )
        for slot, new in zip(stored, state if self.is_lstm[index] else (state,)):
            slot[:, :, first:last] = new.reshape(1, batch, count, -1)
        inter = block.inter_proj(block.dropout(inter)).reshape(batch, count, channels)
        return x + block.inter_norm(inter.transpose(1, 2))

    def __call__(self, rep: Tensor) -> Tensor:
        masker = self.masker
        batch, _, frames = rep.shape
        x = _pointwise(masker.bottleneck, masker.input_norm(rep))
        if self.seen == 0:
            x = F.pad(x, (self.left, 0))
        begin, end = self.seen, self.seen + x.shape[-1]
        chunk_size, hop = self.chunk_size, self.hop
        # Chunks c with c * hop < end and c * hop + K > begin, and the part of each that is new.
        chunks = []
        for chunk_index in range(max(0, (begin - chunk_size) // hop + 1), (end - 1) // hop + 1):
            start = chunk_index * hop
            first, last = max(begin - start, 0), min(end - start, chunk_size)
            chunks.append([chunk_index, first, x[..., start + first - begin : start + last - begin]])
        for index in range(len(masker.blocks)):
            for part in chunks:
                part[2] = self._block(index, part[0], part[1], part[2])
        summed = None
        for chunk_index, first, part in chunks:
            head = _pointwise(masker.output_conv, masker.output_act(part))
            offset = chunk_index * hop + first - begin
            if summed is None:
                summed = head.new_zeros(batch, head.shape[1], end - begin)
            summed[..., offset : offset + head.shape[-1]] += head
        self.seen = end
        summed = summed[..., summed.shape[-1] - frames :]  # drop the left padding frames
        if masker.output_head == "direct":
            return masker.mask_act(summed).reshape(batch, masker.n_src, masker.n_filters, frames)
        streams = summed.reshape(batch * masker.n_src, masker.bottleneck_channels, frames)
        tanh, gate, mask = (
            partial(_pointwise, conv) for conv in (masker.output_tanh, masker.output_gate, masker.mask_conv)
        )
        masks = masker.mask_act(gated_masks(streams, tanh, gate, mask))
        return masks.reshape(batch, masker.n_src, masker.n_filters, frames)


class StreamingSeparator:
    """Separate a stream block by block with a causal model, at a fixed latency.

    ``push(block)`` takes ``[time]`` (or ``[batch, time]``) samples at the model's rate,
    any number of them, and returns ``[n_src, time]`` (``[batch, n_src, time]``): output
    sample ``i`` is sample ``i - latency`` of what ``model`` gives on the whole stream
    (zeros before that). ``flush()`` ends the stream and returns the last ``latency``
    samples; the separator is then ready for a new stream, as after ``reset()``.

    The model is put in eval mode; build the separator after moving the model to its
    device and dtype (it keeps views of the weights). Causal models only (see
    :func:`streaming_problem`). For DPRNN that is ``bidirectional_intra=False,
    bidirectional=False, norm="cLN"``: a bidirectional intra RNN would read to the end
    of each chunk and add up to a chunk of latency (``chunk_size * stride`` samples,
    100 ms for the common ks16 geometry), where the unidirectional one adds none.

    Attributes:
        latency: ``D = L - 1`` samples (encoder window ``L``); see the module docstring.
    """

    def __init__(self, model: EncoderMaskerDecoder) -> None:
        check_streamable(model)
        self.model = model.eval()
        encoder = model.encoder
        self.kernel, self.stride = encoder.kernel_size, encoder.stride
        self.latency = self.kernel - 1
        # Zeros the offline framing puts before the first sample (sepkit.models.pipeline).
        self.edge = {"centered": self.kernel // 2, "hop_padded": self.stride}.get(model.framing, 0)
        self.n_src = int(model.n_src)
        self.masker = _TCNStream(model.masker) if isinstance(model.masker, TCNMasker) else _DPRNNStream(model.masker)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far; the next block starts a new one."""
        self.batch: int | None = None
        self.squeeze = False
        self.pending: Tensor | None = None  # [batch, samples] not yet framed (padded coordinates)
        self.tail: Tensor | None = None  # [batch, n_src, L - S] decoder overlap-add tail
        self.ready: Tensor | None = None  # [batch, n_src, k] final output not yet returned
        self.to_drop = self.edge  # decoded samples before the first input sample
        self.consumed = 0
        self.masker.reset()

    def _start(self, batch: int) -> None:
        self.batch = batch
        self.pending = torch.zeros(batch, self.edge, device=self.device, dtype=self.dtype)
        self.tail = torch.zeros(batch, self.n_src, self.kernel - self.stride, device=self.device, dtype=self.dtype)
        self.ready = torch.zeros(batch, self.n_src, self.latency, device=self.device, dtype=self.dtype)

    def _advance(self, samples: Tensor) -> None:
        """Frame, separate and decode what ``samples`` ``[batch, time]`` completes."""
        self.pending = torch.cat([self.pending, samples], dim=-1)
        frames = (self.pending.shape[-1] - self.kernel) // self.stride + 1
        if frames <= 0:
            return
        framed = self.pending[:, : (frames - 1) * self.stride + self.kernel]
        self.pending = self.pending[:, frames * self.stride :]
        # The filterbanks as matmuls on the frames: the same sums as the offline conv and
        # transposed conv (up to rounding), without oneDNN's per-call cost, which is most
        # of the time of a call with a few frames. The decoder's bias is added in _finalise.
        rep = self.model.encoder.encode_frames(framed)  # [batch, n_filters, frames]
        masked = self.masker(rep) * rep.unsqueeze(1)
        wav = self.model.decoder.overlap_add_frames(masked)  # [batch, n_src, (frames - 1) * S + L]
        overlap = self.tail.shape[-1]
        wav[..., :overlap] += self.tail
        final_length = frames * self.stride
        self.tail = wav[..., final_length:].clone()
        self._finalise(wav[..., :final_length])

    def _finalise(self, decoded: Tensor) -> None:
        """Queue decoded samples ``[batch, n_src, k]`` that no later frame overlaps."""
        bias = self.model.decoder.deconv.bias
        if bias is not None:  # added once per output sample, not per frame
            decoded = decoded + bias
        if self.to_drop:
            dropped = min(self.to_drop, decoded.shape[-1])
            decoded, self.to_drop = decoded[..., dropped:], self.to_drop - dropped
        self.ready = torch.cat([self.ready, decoded], dim=-1)

    def _take(self, count: int) -> Tensor:
        out, self.ready = self.ready[..., :count], self.ready[..., count:]
        return out.squeeze(0) if self.squeeze else out

    @torch.no_grad()
    def push(self, block: Tensor) -> Tensor:
        """Next samples ``[time]`` or ``[batch, time]`` -> as many output samples
        ``[n_src, time]`` or ``[batch, n_src, time]``, ``latency`` samples behind."""
        if block.dim() not in (1, 2):
            raise ValueError(f"StreamingSeparator.push: expected [time] or [batch, time], got {tuple(block.shape)}")
        squeeze = block.dim() == 1
        block = (block[None] if squeeze else block).to(device=self.device, dtype=self.dtype)
        if self.batch is None:
            self._start(block.shape[0])
            self.squeeze = squeeze
        elif block.shape[0] != self.batch or squeeze != self.squeeze:
            raise ValueError(
                f"StreamingSeparator.push: this stream has batch {self.batch} "
                f"({'unbatched' if self.squeeze else 'batched'}); got a block of shape {tuple(block.shape)}"
            )
        self.consumed += block.shape[-1]
        self._advance(block)
        return self._take(block.shape[-1])

    def _offline_padded_length(self) -> int:
        """Length of the signal the offline model frames for this stream, edges included
        (:meth:`~sepkit.models.pipeline.EncoderMaskerDecoder.forward`)."""
        length = self.consumed
        if self.model.framing == "truncate" and length >= self.kernel:
            return length - (length - self.kernel) % self.stride
        return self.model.padded_length(length) + 2 * self.edge

    @torch.no_grad()
    def flush(self) -> Tensor:
        """End the stream: the last ``latency`` samples ``[n_src, latency]`` (zeros for a
        stream that never started), then :meth:`reset`.

        The end is framed as the offline model frames it: the zeros its framing pads
        on the right are fed, and the decoder's overlap-add tail, which no frame follows,
        becomes final; where the offline model drops the last samples (``"truncate"``)
        their output is zero, as there."""
        if self.batch is None:
            return torch.zeros(self.n_src, self.latency, device=self.device, dtype=self.dtype)
        padding = self._offline_padded_length() - self.edge - self.consumed
        self._advance(torch.zeros(self.batch, max(0, padding), device=self.device, dtype=self.dtype))
        self._finalise(self.tail)
        out = self._take(self.latency)
        if out.shape[-1] < self.latency:  # the offline output's zero-filled end
            out = F.pad(out, (0, self.latency - out.shape[-1]))
        self.reset()
        return out


class LatencyTrimmed:
    """A :class:`StreamingSeparator` for writing files: the same output without the
    ``latency`` leading zeros, so its sample ``i`` is the offline model's sample ``i``.
    ``push(block)`` returns the ``[n_src, k]`` samples final so far, ``finish()`` the
    rest (the interface of ``sepkit.inference.ChunkStitcher``)."""

    def __init__(self, separator: StreamingSeparator) -> None:
        self.separator = separator
        self.to_skip = separator.latency

    def _trim(self, out: Tensor) -> Tensor:
        skipped = min(self.to_skip, out.shape[-1])
        self.to_skip -= skipped
        return out[..., skipped:]

    def push(self, block: Tensor) -> Tensor:
        return self._trim(self.separator.push(block))

    def finish(self) -> Tensor:
        out = self._trim(self.separator.flush())
        self.to_skip = self.separator.latency
        return out
