"""Block-wise polyphase resampling with the result of whole-signal ``scipy.signal.resample_poly``.

For a rate change by ``up / down`` (coprime), ``resample_poly`` designs a low-pass FIR
``h`` (``firwin(2 * half_len + 1, 1 / max(up, down), window=("kaiser", 5.0))`` with
``half_len = 10 * max(up, down)``, scaled by ``up``), zero-pads it in front by
``n_pre_pad = down - half_len % down`` taps, and keeps outputs
``n_pre_remove = (half_len + n_pre_pad) // down`` onwards of the up-sample / filter /
down-sample chain, ``ceil(n_in * up / down)`` of them. Output ``y[i]`` is thus

    y[i] = sum_j x[j] * h_pad[t - j * up],   t = (i + n_pre_remove) * down,

over the ``j`` where ``0 <= t - j * up < len(h_pad)``, with ``x`` zero outside the
signal. :class:`StreamingResampler` evaluates the same sum from the most recent
``taps = ceil(len(h_pad) / up)`` input samples, so it can emit every output whose
inputs have arrived and keep only that short history between blocks: memory does not
grow with the signal's length.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

# scipy.signal.resample_poly's default window.
KAISER_BETA = 5.0
# Outputs computed per inner step: bounds the temporary arrays whatever the block size.
_OUTPUTS_PER_STEP = 1 << 16


def resample_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """The zero-padded filter ``h_pad`` (float64, gain ``up``) and ``n_pre_remove`` that
    ``resample_poly(x, up, down)`` uses for coprime ``up`` and ``down``."""
    from scipy.signal import firwin  # only when rates differ: scipy.signal costs ~70 MiB of RSS

    max_rate = max(up, down)
    half_len = 10 * max_rate
    taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", KAISER_BETA)) * up
    n_pre_pad = down - half_len % down
    return np.concatenate([np.zeros(n_pre_pad), taps]), (half_len + n_pre_pad) // down


class StreamingResampler:
    """Resample ``[channels, time]`` float64 blocks from ``orig_rate`` to ``new_rate`` Hz.

    Feed blocks in order with :meth:`push` and close with :meth:`finish`; the
    concatenated outputs equal ``resample_poly(x, up, down, axis=-1)`` on the whole
    signal up to float rounding (same filter, same alignment, same length).
    """

    def __init__(self, orig_rate: int, new_rate: int, channels: int = 1) -> None:
        ratio = Fraction(new_rate, orig_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.channels = channels
        self.identity = self.up == self.down == 1
        # Equal rates: samples pass through unchanged (as in resample_poly), no filter.
        h_pad, self.n_pre_remove = (np.ones(1), 0) if self.identity else resample_filter(self.up, self.down)
        self.taps = -(-len(h_pad) // self.up)
        # phases[p, m] = h_pad[p + m * up]; the zero taps added to fill the last row
        # contribute nothing to the sums.
        self.phases = np.zeros(self.taps * self.up)
        self.phases[: len(h_pad)] = h_pad
        self.phases = self.phases.reshape(self.taps, self.up).T.copy()
        # History: input samples from global index `self.start` on (zeros before 0).
        self.buffer = np.zeros((channels, self.taps))
        self.start = -self.taps
        self.received = 0
        self.emitted = 0
        self.finished = False

    def _newest_input(self, i: int) -> int:
        """Index of the newest input sample that output ``i`` depends on."""
        return (i + self.n_pre_remove) * self.down // self.up

    def _compute(self, stop: int) -> np.ndarray:
        """Outputs ``[self.emitted, stop)`` from the buffered history ``[channels, n]``."""
        out = np.empty((self.channels, stop - self.emitted))
        for first in range(self.emitted, stop, _OUTPUTS_PER_STEP):
            last = min(first + _OUTPUTS_PER_STEP, stop)
            # Outputs i and i + up use the same phase; their newest inputs are `down` apart.
            for i in range(first, min(first + self.up, last)):
                count = len(range(i, last, self.up))
                t = (i + self.n_pre_remove) * self.down
                phase = self.phases[t % self.up]
                newest = t // self.up - self.start
                acc = np.zeros((self.channels, count))
                for m in range(self.taps):
                    begin = newest - m
                    acc += phase[m] * self.buffer[:, begin : begin + (count - 1) * self.down + 1 : self.down]
                out[:, i - self.emitted : last - self.emitted : self.up] = acc
        return out

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self.emitted:
            return np.zeros((self.channels, 0))
        out = self._compute(stop)
        self.emitted = stop
        # Keep only what the next output still needs.
        keep_from = self._newest_input(self.emitted) - self.taps + 1
        drop = max(0, min(keep_from - self.start, self.buffer.shape[1]))
        self.buffer = self.buffer[:, drop:]
        self.start += drop
        return out

    def push(self, block: np.ndarray) -> np.ndarray:
        """Take the next input ``[channels, n]``; return the outputs now complete ``[channels, k]``."""
        if self.finished:
            raise RuntimeError("push after finish")
        block = np.asarray(block, dtype=np.float64).reshape(self.channels, -1)
        if self.identity:
            self.received += block.shape[1]
            return block.copy()
        self.buffer = np.concatenate([self.buffer, block], axis=1)
        self.received += block.shape[1]
        # Output i is complete once its newest input has arrived:
        # (i + n_pre_remove) * down // up <= received - 1.
        stop = (self.received * self.up - 1) // self.down - self.n_pre_remove + 1
        return self._emit(stop)

    def finish(self) -> np.ndarray:
        """Return the remaining outputs (inputs past the end count as zeros)."""
        self.finished = True
        if self.identity:
            return np.zeros((self.channels, 0))
        total = -(-self.received * self.up // self.down)
        needed = self._newest_input(total - 1) + 1 if total else self.received
        pad = max(0, needed - self.start - self.buffer.shape[1])
        self.buffer = np.concatenate([self.buffer, np.zeros((self.channels, pad))], axis=1)
        return self._emit(total)

    def output_length(self) -> int:
        """Outputs that the input received so far gives in total (``ceil(n * up / down)``)."""
        return -(-self.received * self.up // self.down)
