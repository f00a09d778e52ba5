"""Where the taps of an SFI convolution (:mod:`torchmos.models.sfi`) fall at a sample rate.

A layer with ``K0`` taps and stride ``S0`` at the reference rate ``F0`` has, at ``Fs``,
``K = int(K0 Fs / F0)`` taps and frames placed in continuous time, every ``S0 Fs / F0``
samples (a fraction: one kernel per fractional frame offset, a polyphase convolution).

>>> g = Geometry.at(24000, kernel_size=10, stride=5, ref_sample_rate=16000)
>>> g.kernel_size, g.hop, g.q, g.frames(24000)
(15, Fraction(15, 2), 2, 3199)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["MAX_PHASES", "Geometry"]

MAX_PHASES = 128  # exact for every common rate (11.025 kHz needs 128 with K0=10, S0=5 at 16 kHz)


@dataclass(frozen=True)
class Geometry:
    """Where the taps of an SFI layer fall at one sample rate.

    Attributes:
        sample_rate: ``Fs``.
        kernel_size: ``K = int(K0 Fs / F0)``.
        stride: the nominal ``S = int(S0 Fs / F0)``.
        hop: the exact frame hop in samples, ``S0 Fs / F0`` (a fraction).
        offsets: first sample of frame ``j`` for ``j < q`` (frame ``a q + j`` starts at
            ``a p + offsets[j]`` with ``hop = p / q``).
        phases: fractional part of frame ``j``'s start, in samples.
        window: the window length ``K0 Fs / F0`` in samples (a fraction).
    """

    sample_rate: int
    kernel_size: int
    stride: int
    hop: Fraction
    offsets: tuple[int, ...]
    phases: tuple[Fraction, ...]
    window: Fraction

    @property
    def q(self) -> int:
        return self.hop.denominator

    @property
    def p(self) -> int:
        return self.hop.numerator

    def frames(self, length: int) -> int:
        """Frames of a signal of ``length`` samples: those whose whole window lies inside it."""
        if length < self.window:
            return 0
        return int((length - self.window) // self.hop) + 1

    def starts(self, n_frames: int) -> list[int]:
        """First sample of each frame (``floor(m * hop)``)."""
        return [(m * self.p) // self.q for m in range(n_frames)]


    @classmethod
    def at(cls, sample_rate: int, kernel_size: int, stride: int, ref_sample_rate: int) -> Geometry:
        """The geometry at ``sample_rate`` of a layer with ``kernel_size`` taps and stride
        ``stride`` at ``ref_sample_rate``; a :class:`ValueError` for a rate that is not a
        positive whole number of Hz, or too low to hold one tap."""
        fs = int(sample_rate)
        if fs <= 0 or fs != sample_rate:
            raise ValueError(f"sample rate must be a positive whole number of Hz, got {sample_rate!r}.")
        f0 = ref_sample_rate
        k = (kernel_size * fs) // f0
        if k < 1:
            raise ValueError(
                f"sample rate {fs} Hz is too low for this layer: its {kernel_size}-tap "
                f"window at {f0} Hz would hold no sample (needs at least {math.ceil(f0 / kernel_size)} Hz)."
            )
        hop = Fraction(stride * fs, f0)
        if hop.denominator > MAX_PHASES:
            hop = hop.limit_denominator(MAX_PHASES)
        p, q = hop.numerator, hop.denominator
        return cls(
            sample_rate=fs,
            kernel_size=k,
            stride=max(1, (stride * fs) // f0),
            hop=hop,
            offsets=tuple((j * p) // q for j in range(q)),
            phases=tuple(Fraction((j * p) % q, q) for j in range(q)),
            window=Fraction(kernel_size * fs, f0),
        )
