"""Sampling-frequency-independent (SFI) 1-D convolution (Saito et al. 2022; Imamura et al. 2024).

An ordinary convolution learns digital kernels, which mean something only at the sample
rate they were trained at. An SFI convolution learns one **latent analog filter** per
(input, output) channel pair, a continuous frequency response ``H(omega)``, and generates
the digital kernel for whatever rate ``Fs`` the input comes at (SPECS §4):

* geometry: ``K = int(K0 * Fs / F0)`` taps and a nominal stride ``S = int(S0 * Fs / F0)``,
  where ``K0, S0`` are the values at the reference rate ``F0`` (wav2vec 2.0's first conv:
  ``K0 = 10, S0 = 5`` at 16 kHz). Frames are placed in **continuous time**: frame ``m``
  covers ``[m S0 / F0, (m S0 + K0) / F0)`` seconds at every rate, so a clip of a given
  duration gives the same number of frames at 8, 16, 24, 44.1 or 48 kHz. When
  ``S0 Fs / F0`` is not a whole number of samples (7.5 at 24 kHz) the frame starts fall
  between samples; the fractional offset is built into the kernel (one kernel per offset,
  a polyphase convolution), rather than rounding the stride and letting frames drift.
* frequency-domain design (default; ``design="freq"``): sample ``H`` at
  ``omega_m = linspace(0, pi Fs, n_freq)`` and solve the real least-squares system
  ``[cos(-omega d_k); sin(-omega d_k)] w = [Re H; Im H]`` for the tap weights ``w_k``
  (``d_k``: the delay of tap ``k`` before the frame centre) with a pseudo-inverse; the
  realised response ``sum_k w_k exp(-j omega d_k)`` then matches ``H`` over ``[0, Fs/2]``
  as well as ``K`` taps allow, with the same gain at every rate.
* time-domain design (``design="time"``): sample the analog impulse response,
  ``w_k = h(d_k) / Fs`` (analytic for the modulated Gaussian; for the neural filter the
  impulse response of ``H`` band-limited to ``Fs/2``, computed numerically).
* below the reference rate (``Fs < F0``) the filters whose centre frequency lies above the
  new Nyquist frequency ``Fs/2`` are masked to zero.

Latent analog filters (``filter=``):

* ``"gauss"``: modulated Gaussian,
  ``H(w) = exp(-(w - mu)^2 / (2 sigma^2)) e^{j phi} + exp(-(w + mu)^2 / (2 sigma^2)) e^{-j phi}``
  with learnable ``mu``, ``sigma``, ``phi`` per filter; centres ERB-spaced from 50 Hz to
  ``F0 / 2`` at initialisation. ``mu`` and ``sigma`` are stored in units of the reference
  Nyquist frequency ``F0 / 2`` (so that optimisers with ordinary learning rates move them;
  :attr:`ModulatedGaussian.centre_hz` gives Hertz), ``phi`` in radians.
* ``"naf"``: neural analog filter, an MLP on random Fourier features of the normalised
  frequency ``nu = f / (F0 / 2)``: ``[cos(b nu), sin(b nu)] -> Linear -> norm -> ReLU -> ...
  -> Linear -> (Re H, Im H)`` for all filters at once. ``norm="layer"`` (default) normalises
  each frequency's features on their own, so ``H`` is a function of ``omega`` alone;
  ``norm="grid"`` normalises over the whole frequency grid as the authors' implementation
  does (``GroupNorm(1, C)``), kept to load their checkpoints.

Kernels are generated on every call while gradients can reach the filters (training).
When they cannot (``torch.no_grad()``, ``inference_mode``, or frozen filters), the kernel
for a rate is cached, keyed on the parameters' version counters and storage, so an
optimiser step, ``load_state_dict`` or ``.to()`` invalidates it automatically; the
design matrices depend on the geometry only and are cached per (rate, device, dtype). Code
that edits parameters through ``.data`` bypasses version counters: call
:meth:`SFIConv1d.clear_cache` after it.

The pieces: :mod:`~torchmos.models.sfi_filters` (the latent analog filters),
:mod:`~torchmos.models.sfi_geometry` (tap placement at a rate),
:mod:`~torchmos.models.sfi_fit` (initialisation from an ordinary kernel) and this module
(the layer: kernel design, caching, the polyphase convolution).

>>> layer = SFIConv1d(1, 8, kernel_size=10, stride=5, ref_sample_rate=16000)
>>> x16, x48 = torch.randn(1, 1, 16000), torch.randn(1, 1, 48000)
>>> layer(x16, sample_rate=16000).shape, layer(x48, sample_rate=48000).shape
(torch.Size([1, 8, 3199]), torch.Size([1, 8, 3199]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sfi_fit
from .sfi_filters import ModulatedGaussian, NeuralAnalogFilter, erb_to_hz, hz_to_erb
from .sfi_geometry import MAX_PHASES as MAX_PHASES
from .sfi_geometry import Geometry

__all__ = [
    "Geometry",
    "ModulatedGaussian",
    "NeuralAnalogFilter",
    "SFIConv1d",
    "erb_to_hz",
    "hz_to_erb",
]


# The rate of the call in progress, per layer (id -> Hz), set by SFIConv1d.at_rate. A context
# variable is private to its thread (and asyncio task): concurrent callers of one shared
# layer each see their own rate, and nothing is written onto the layer.
_CALL_RATES: ContextVar[dict[int, int] | None] = ContextVar("torchmos_sfi_call_rates", default=None)


# ----------------------------------------------------------------------------- the layer


class SFIConv1d(nn.Module):
    """A convolution whose kernels are generated for the input's sample rate.

    Args:
        in_channels, out_channels: as ``nn.Conv1d``.
        kernel_size, stride: ``K0, S0`` at ``ref_sample_rate``.
        ref_sample_rate: ``F0``, the rate at which this layer is an ordinary
            ``Conv1d(kernel_size, stride)``.
        filter: ``"gauss"`` (modulated Gaussian) or ``"naf"`` (neural analog filter).
        design: ``"freq"`` (least squares in frequency, default) or ``"time"`` (impulse
            response sampling).
        n_freq: frequencies sampled in ``[0, Fs/2]`` for the design (640 as the authors).
        bias: add a learnable bias per output channel.
        sample_rate: the default rate used by ``forward(x)`` without ``sample_rate=``
            (outside :meth:`at_rate`; see :meth:`set_sample_rate`); ``ref_sample_rate``
            if not given.
        init_sigma_hz, freq_range: initialisation of the Gaussian filters.
        n_rff, hidden, rff_scale, naf_norm, norm_freq: the neural analog filter
            (:class:`NeuralAnalogFilter`).

    ``forward(x, sample_rate)``: ``x`` is (B, in_channels, L) or (B, L) for one input
    channel; returns (B, out_channels, frames). When the layer sits inside a model that
    calls it without a rate (a ``transformers`` feature encoder), the caller passes the
    rate with ``with layer.at_rate(fs): model(x)``, which writes nothing onto the layer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 ref_sample_rate: int = 16000, filter: str = "gauss", design: str = "freq",
                 n_freq: int = 640, bias: bool = False, sample_rate: int | None = None,
                 init_sigma_hz: float = 400.0, freq_range: tuple[float, float] | None = None,
                 n_rff: int = 128, hidden: tuple[int, ...] = (224, 224), rff_scale: float = 10.0,
                 naf_norm: str = "layer", norm_freq: float | None = None) -> None:
        super().__init__()
        if filter not in ("gauss", "naf"):
            raise ValueError(f"filter must be 'gauss' or 'naf', got {filter!r}.")
        if design not in ("freq", "time"):
            raise ValueError(f"design must be 'freq' or 'time', got {design!r}.")
        if kernel_size < 1 or stride < 1 or n_freq < 2:
            raise ValueError("kernel_size and stride must be >= 1 and n_freq >= 2.")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.ref_kernel_size, self.ref_stride = int(kernel_size), int(stride)
        self.ref_sample_rate = int(ref_sample_rate)
        self.filter, self.design, self.n_freq = filter, design, int(n_freq)
        n = self.in_channels * self.out_channels
        if filter == "gauss":
            self.analog: nn.Module = ModulatedGaussian(n, self.ref_sample_rate, freq_range, init_sigma_hz)
        else:
            self.analog = NeuralAnalogFilter(n, self.ref_sample_rate, n_rff, tuple(hidden), rff_scale,
                                             naf_norm, norm_freq)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.sample_rate = int(sample_rate or ref_sample_rate)
        self._geometry: dict[int, Geometry] = {}
        self._design: dict[tuple, Tensor] = {}
        self._kernels: dict[tuple, tuple[tuple, Tensor]] = {}

    # -- rates and geometry -------------------------------------------------------------

    def set_sample_rate(self, sample_rate: int) -> None:
        """Change the layer's default rate, used by ``forward(x)`` when no ``sample_rate=``
        is given and no :meth:`at_rate` block is open. This edits the layer: for the rate
        of one call use ``sample_rate=`` or :meth:`at_rate`."""
        self.geometry(sample_rate)  # validates
        self.sample_rate = int(sample_rate)

    @contextmanager
    def at_rate(self, sample_rate: int) -> Iterator[None]:
        """Within the block, calls without ``sample_rate=`` in this thread (or asyncio
        task) run at ``sample_rate``; other threads and the layer's default are untouched.

        >>> layer = SFIConv1d(1, 4, kernel_size=10, stride=5)
        >>> with layer.at_rate(48000):
        ...     inside = layer(torch.randn(1, 48000)).shape[-1]
        >>> inside, layer.sample_rate
        (3199, 16000)
        """
        fs = self.geometry(sample_rate).sample_rate  # validates
        token = _CALL_RATES.set({**(_CALL_RATES.get() or {}), id(self): fs})
        try:
            yield
        finally:
            _CALL_RATES.reset(token)

    def _rate(self, sample_rate: int | None) -> int:
        """The rate of this call: ``sample_rate``, else the open :meth:`at_rate`, else the default."""
        if sample_rate:
            return int(sample_rate)
        rates = _CALL_RATES.get()
        return self.sample_rate if rates is None else rates.get(id(self), self.sample_rate)

    def geometry(self, sample_rate: int) -> Geometry:
        """Kernel size, stride and tap placement at ``sample_rate`` (cached)."""
        fs = int(sample_rate)
        g = self._geometry.get(fs)
        if g is None:
            g = Geometry.at(sample_rate, self.ref_kernel_size, self.ref_stride, self.ref_sample_rate)
            self._geometry[fs] = g
        return g

    def kernel_size_at(self, sample_rate: int) -> int:
        return self.geometry(sample_rate).kernel_size

    def stride_at(self, sample_rate: int) -> int:
        return self.geometry(sample_rate).stride

    def output_length(self, length: int, sample_rate: int | None = None) -> int:
        """Frames produced for an input of ``length`` samples at ``sample_rate``."""
        return self.geometry(self._rate(sample_rate)).frames(int(length))

    def delays(self, sample_rate: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """(q, K) delays in seconds of each tap before its frame's centre, per phase."""
        g = self.geometry(sample_rate)
        centre = self.ref_kernel_size / (2.0 * self.ref_sample_rate)
        k = torch.arange(g.kernel_size, dtype=torch.float64)
        ph = torch.tensor([float(d) for d in g.phases], dtype=torch.float64)
        return (centre - (k[None, :] - ph[:, None]) / g.sample_rate).to(dtype)

    def omega(self, sample_rate: int, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """The design's angular frequencies, ``linspace(0, pi Fs, n_freq)`` rad/s."""
        return torch.linspace(0.0, math.pi * int(sample_rate), self.n_freq, device=device, dtype=dtype)

    # -- kernel design ---------------------------------------------------------------

    def _design_matrix(self, fs: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(q, K, 2 n_freq): maps sampled [Re H; Im H] to the taps of each phase."""
        key = (fs, self.design, device, dtype)
        mat = self._design.get(key)
        if mat is not None:
            return mat
        with torch.inference_mode(False), torch.no_grad():
            d = self.delays(fs)  # (q, K) float64
            w = self.omega(fs, dtype=torch.float64)  # (M,)
            arg = -w[None, :, None] * d[:, None, :]  # (q, M, K)
            if self.design == "freq":
                a = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)  # (q, 2M, K)
                mat = torch.linalg.pinv(a)  # (q, K, 2M)
            else:  # band-limited impulse response sampling: w_k = h(d_k) / Fs
                step = w[1] - w[0]
                trap = torch.full_like(w, 1.0)
                trap[0] = trap[-1] = 0.5
                c = (trap * step / (math.pi * fs))[None, None, :]
                # h(d) = 1/pi int_0^{pi Fs} Re H cos(w d) - Im H sin(w d) dw; arg = -w d
                mat = torch.cat([c * torch.cos(arg).transpose(1, 2), c * torch.sin(arg).transpose(1, 2)], dim=2)
            mat = mat.to(device=device, dtype=dtype).contiguous()
        self._design[key] = mat
        return mat

    def _masked(self, fs: int) -> Tensor | None:
        """(n,) 0/1 mask of filters whose centre is below ``Fs/2``; None when ``Fs >= F0``."""
        if fs >= self.ref_sample_rate:
            return None
        with torch.no_grad():
            if isinstance(self.analog, ModulatedGaussian):
                centre = self.analog.centre_hz()
            else:  # the frequency of the peak of |H| over the reference band
                w = self.omega(self.ref_sample_rate, device=self.analog.rff.device, dtype=self.analog.rff.dtype)
                re, im = self.analog.response(w)
                centre = w[torch.argmax(re**2 + im**2, dim=1)] / (2 * math.pi)
            return (centre <= fs / 2.0).to(centre.dtype)

    def _generate(self, fs: int) -> Tensor:
        """(q, out, in, K) kernels at ``fs`` (differentiable in the filter parameters)."""
        g = self.geometry(fs)
        param = next(self.analog.parameters())
        device, dtype = param.device, param.dtype
        n = self.in_channels * self.out_channels
        if self.design == "time" and isinstance(self.analog, ModulatedGaussian):
            d = self.delays(fs).to(device=device, dtype=dtype)
            w = self.analog.impulse(d.reshape(-1)).reshape(n, g.q, g.kernel_size).transpose(0, 1) / fs
        else:
            re, im = self.analog.response(self.omega(fs, device=device, dtype=dtype))
            resp = torch.cat([re, im], dim=1)  # (n, 2M)
            w = torch.einsum("qkm,nm->qnk", self._design_matrix(fs, device, dtype), resp)
        mask = self._masked(fs)
        if mask is not None:
            w = w * mask[None, :, None]
        return w.reshape(g.q, self.out_channels, self.in_channels, g.kernel_size)

    def _state_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.analog.parameters())

    def kernels(self, sample_rate: int | None = None) -> Tensor:
        """The digital kernels at ``sample_rate``: (q, out_channels, in_channels, K).

        ``q`` is the number of frame phases (1 when ``S0 Fs / F0`` is a whole number);
        kernel ``j`` serves frames ``j, j + q, j + 2q, ...``. Cached when no gradient can
        reach the filters (see the module docs).
        """
        fs = self._rate(sample_rate)
        params = list(self.analog.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._generate(fs)
        key = (fs, torch.is_inference_mode_enabled())
        state = self._state_key()
        hit = self._kernels.get(key)
        if hit is not None and hit[0] == state:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            w = self._generate(fs)
        self._kernels[key] = (state, w)
        return w

    def weight(self, sample_rate: int | None = None) -> Tensor:
        """The kernel of frame 0 at ``sample_rate``, (out, in, K), like ``nn.Conv1d.weight``."""
        return self.kernels(sample_rate)[0]

    def clear_cache(self) -> None:
        """Forget cached kernels (after editing parameters through ``.data``)."""
        self._kernels.clear()

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to()/.cuda()/.half(): cached tensors would stay on the old device; drop them
        self._kernels.clear()
        self._design.clear()
        return super()._apply(fn, recurse)

    # -- responses, for inspection and plots ------------------------------------------

    def analog_response(self, freqs_hz: Tensor) -> Tensor:
        """Complex response of the latent analog filters at ``freqs_hz``: (n_filters, len)."""
        freqs_hz = torch.as_tensor(freqs_hz)
        p = next(self.analog.parameters())
        re, im = self.analog.response(2 * math.pi * freqs_hz.to(device=p.device, dtype=p.dtype))
        return torch.complex(re, im)

    def realised_response(self, sample_rate: int, freqs_hz: Tensor, phase: int = 0) -> Tensor:
        """Complex response ``sum_k w_k exp(-j omega d_k)`` of the digital kernels generated at
        ``sample_rate`` (frame phase ``phase``), at ``freqs_hz``: (n_filters, len)."""
        w = self.kernels(sample_rate)[phase].reshape(-1, self.geometry(sample_rate).kernel_size)
        d = self.delays(sample_rate)[phase]
        om = 2 * math.pi * torch.as_tensor(freqs_hz, dtype=torch.float64)
        e = torch.exp(-1j * om[:, None] * d[None, :])  # (len, K)
        return w.to(torch.complex128) @ e.T

    # -- forward ---------------------------------------------------------------------

    def forward(self, x: Tensor, sample_rate: int | None = None) -> Tensor:
        """(B, in, L) or (B, L) at ``sample_rate`` -> (B, out, frames)."""
        if x.dim() == 2 and self.in_channels == 1:
            x = x[:, None]
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, L), got {tuple(x.shape)}.")
        fs = self._rate(sample_rate)
        g = self.geometry(fs)
        n_frames = g.frames(x.shape[-1])
        w = self.kernels(fs).to(x.dtype)
        if n_frames == 0:
            y = x.new_zeros(x.shape[0], self.out_channels, 0)
        elif g.q == 1:
            y = F.conv1d(x, w[0], stride=g.p)[..., :n_frames]
        else:
            per = -(-n_frames // g.q)  # frames per phase, rounded up
            outs = []
            for j in range(g.q):
                n_j = (n_frames - j + g.q - 1) // g.q if n_frames > j else 0
                if n_j == 0:
                    outs.append(x.new_zeros(x.shape[0], self.out_channels, per))
                    continue
                seg = x[..., g.offsets[j] : g.offsets[j] + (n_j - 1) * g.p + g.kernel_size]
                o = F.conv1d(seg, w[j], stride=g.p)
                outs.append(F.pad(o, (0, per - n_j)))
            y = torch.stack(outs, dim=-1).reshape(x.shape[0], self.out_channels, per * g.q)[..., :n_frames]
        if self.bias is not None:
            y = y + self.bias[None, :, None].to(y.dtype)
        return y

    # -- initialisation from an ordinary kernel -----------------------------------------

    def fit_to_kernel(self, weight: Tensor, steps: int = 300, lr: float | None = None) -> float:
        """Fit the analog filters so that the kernel generated at the reference rate matches
        ``weight`` (out, in, K0), e.g. the first conv of a pretrained 16 kHz model; returns
        the final mean loss (see :func:`torchmos.models.sfi_fit.fit_to_kernel`)."""
        return sfi_fit.fit_to_kernel(self, weight, steps, lr)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.ref_kernel_size}, "
                f"stride={self.ref_stride} at {self.ref_sample_rate} Hz, filter={self.filter!r}, "
                f"design={self.design!r}, n_freq={self.n_freq}, sample_rate={self.sample_rate}")
