"""Unit tests of torchmos.audio, the only door for audio."""

from __future__ import annotations

import math
import os
import shlex
import struct
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from tests.helpers import speechlike
from torchmos import audio
from torchmos.audio import (
    AudioEntry,
    AudioError,
    SilentAudioWarning,
    check_sample_rate,
    find_audio,
    pad_batch,
    prepare,
    read,
    resample,
    to_float,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, data: np.ndarray, fs: int = 16000, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, fs, **kw)
    return path


def _pcm16(seconds: float = 0.25, fs: int = 16000, seed: int = 0) -> np.ndarray:
    return (speechlike(seconds, fs, seed).numpy() * 32767).astype(np.int16)


# ============================================================================ to_float

INT_CASES = [  # dtype, samples, expected floats
    ("int16", [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
    ("int32", [-(2**31), 0, 2**30, 2**31 - 1], [-1.0, 0.0, 0.5, (2**31 - 1) / 2**31]),
    ("int8", [-128, 0, 64, 127], [-1.0, 0.0, 0.5, 127 / 128]),
    ("uint8", [0, 128, 192, 255], [-1.0, 0.0, 0.5, 127 / 128]),
]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize(("dtype", "samples", "expected"), INT_CASES, ids=[c[0] for c in INT_CASES])
def test_to_float_scales_integer_pcm(kind, dtype, samples, expected):
    a = np.array(samples, dtype=dtype)
    x = a if kind == "numpy" else torch.from_numpy(a)
    y = to_float(x)
    assert isinstance(y, torch.Tensor)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float16", "float32"])
def test_to_float_floats_become_float32_values_kept(kind, dtype):
    a = np.array([-1.5, -0.25, 0.0, 0.125, 2.0], dtype=dtype)  # out of [-1, 1] is kept as is
    x = a if kind == "numpy" else torch.from_numpy(a)
    y = to_float(x)
    assert y.dtype == torch.float32
    assert y.tolist() == [-1.5, -0.25, 0.0, 0.125, 2.0]


def test_to_float_big_endian_and_read_only_numpy():
    # raw PCM read with np.frombuffer is read-only, and may be big-endian (AIFF, NIST)
    raw = struct.pack(">4h", -32768, 0, 16384, 32767)
    be = np.frombuffer(raw, dtype=">i2")
    le = np.frombuffer(struct.pack("<4h", -32768, 0, 16384, 32767), dtype="<i2")
    assert not le.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable arrays
        y_be, y_le = to_float(be), to_float(le)
    torch.testing.assert_close(y_be, y_le, rtol=0, atol=0)
    assert y_le.tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]


def test_to_float_non_contiguous_numpy():
    a = np.arange(-8, 8, dtype=np.int16).reshape(4, 4).T  # Fortran order view
    torch.testing.assert_close(to_float(a), torch.from_numpy(a.copy()).float() / 32768)


@pytest.mark.parametrize(
    "x",
    [
        np.array([True, False]),
        torch.tensor([True, False]),
        np.array([1 + 1j, 0j]),
        torch.tensor([1 + 1j, 0j]),
        np.array([1, 2], dtype=np.int64),
        torch.tensor([1, 2], dtype=torch.int64),
        np.array([1, 2], dtype=np.uint16),
    ],
    ids=["np-bool", "torch-bool", "np-complex", "torch-complex", "np-int64", "torch-int64", "np-uint16"],
)
def test_to_float_refuses_other_dtypes_naming_the_item(x):
    with pytest.raises(AudioError, match=r"clips\[3\]: unsupported sample dtype"):
        to_float(x, "clips[3]")


def test_to_float_refuses_non_arrays():
    with pytest.raises(AudioError, match=r"wav: expected a torch.Tensor or numpy array, got list"):
        to_float([0.1, 0.2], "wav")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_prepare_refuses_bad_dtype_in_list_naming_index_and_id(dtype):
    clips = [torch.zeros(1600) + 0.1, torch.ones(1600, dtype=dtype)]
    with pytest.raises(AudioError, match=r"preds\[1\] \(utt-b\): unsupported sample dtype"):
        prepare(clips, 16000, None, names=["utt-a", "utt-b"])


# ============================================================================ sample rate


@pytest.mark.parametrize(
    ("fs", "expected"),
    [(16000, 16000), (16000.0, 16000), (np.int64(8000), 8000), (np.float32(22050.0), 22050), (1, 1)],
)
def test_check_sample_rate_accepts_whole_positive_numbers(fs, expected):
    got = check_sample_rate(fs)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    ("fs", "message"),
    [
        (None, "unknown; pass fs="),
        (0, "positive whole number"),
        (-16000, "positive whole number"),
        (16000.5, "positive whole number"),
        (float("nan"), "positive whole number"),
        (float("inf"), "positive whole number"),
        (np.float64("nan"), "positive whole number"),
        ("16000", "must be a number of Hz"),
        (True, "must be a number of Hz"),
        (torch.tensor(16000), "must be a number of Hz"),
    ],
    ids=["none", "zero", "negative", "fraction", "nan", "inf", "np-nan", "str", "bool", "tensor"],
)
def test_check_sample_rate_refuses(fs, message):
    with pytest.raises(AudioError, match=message) as info:
        check_sample_rate(fs, "ScoreqNR")
    assert str(info.value).startswith("ScoreqNR: ")


@pytest.mark.parametrize("fs", [None, 0, -8000, 16000.5, float("nan")])
def test_prepare_checks_the_sample_rate(fs):
    with pytest.raises(AudioError, match=r"^preds: .*sample rate"):
        prepare(torch.randn(1600), fs, 16000)


# ============================================================================ prepare: shapes


def test_prepare_1d_is_one_clip():
    x = speechlike(0.5, 16000, 1)
    out = prepare(x, 16000, 16000)
    assert len(out) == 1
    assert out[0].dtype == torch.float32 and out[0].dim() == 1
    assert torch.equal(out[0], x)


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_prepare_2d_is_a_batch(kind):
    x = torch.stack([speechlike(0.25, 16000, s) for s in range(3)])
    out = prepare(x if kind == "torch" else x.numpy(), 16000, None)
    assert len(out) == 3
    for row, clip in zip(x, out):
        assert torch.equal(row, clip)


def test_prepare_int16_batch_is_scaled():
    x = torch.tensor([[-32768, 0, 16384, 100] * 400], dtype=torch.int16)
    (clip,) = prepare(x, 16000, None)
    assert clip.dtype == torch.float32
    assert clip[:3].tolist() == [-1.0, 0.0, 0.5]


@pytest.mark.parametrize("as_type", [list, tuple, torch.tensor, np.array])
def test_prepare_lengths_cut_padding_which_is_never_seen(as_type):
    x = torch.full((3, 4000), float("nan"))  # NaN padding: any look at it would raise
    x[0, :4000] = speechlike(0.25, 16000, 0)
    x[1, :2500] = speechlike(2500 / 16000, 16000, 1)
    x[2, :1600] = speechlike(0.1, 16000, 2)
    out = prepare(x, 16000, None, lengths=as_type([4000, 2500, 1600]))
    assert [c.shape[0] for c in out] == [4000, 2500, 1600]
    for i, c in enumerate(out):
        assert torch.isfinite(c).all()
        assert torch.equal(c, x[i, : c.shape[0]])


def test_prepare_same_answer_in_any_batch():
    """A clip's prepared (resampled) samples do not depend on the batch or its padding."""
    a, b = speechlike(0.3, 8000, 3), speechlike(0.7, 8000, 4)
    alone = prepare(a, 8000, 16000)[0]
    padded = torch.zeros(2, b.shape[0])
    padded[0, : a.shape[0]] = a
    padded[0, a.shape[0] :] = 0.5  # garbage padding
    padded[1] = b
    in_batch = prepare(padded, 8000, 16000, lengths=[a.shape[0], b.shape[0]])[0]
    in_list = prepare([b, a], 8000, 16000)[1]
    assert torch.equal(alone, in_batch)
    assert torch.equal(alone, in_list)


def test_prepare_list_of_mixed_clips_of_any_length():
    clips = [
        speechlike(0.2, 16000, 0),
        speechlike(0.5, 16000, 1).numpy(),
        torch.from_numpy(_pcm16(0.3, 16000, 2)),
        _pcm16(0.1, 16000, 3).astype(np.float64) / 32768,
    ]
    for seq in (clips, tuple(clips)):
        out = prepare(seq, 16000, None)
        assert [c.shape[0] for c in out] == [3200, 8000, 4800, 1600]
        assert all(c.dtype == torch.float32 and c.dim() == 1 for c in out)
        torch.testing.assert_close(out[2], torch.from_numpy(_pcm16(0.3, 16000, 2)).float() / 32768)


def test_prepare_resamples_to_target_rate():
    clips = [speechlike(1.0, 48000, 0), speechlike(0.5, 48000, 1)]
    out = prepare(clips, 48000, 16000)
    assert [c.shape[0] for c in out] == [16000, 8000]
    torch.testing.assert_close(out[0], torchaudio.functional.resample(clips[0], 48000, 16000))


def test_prepare_doc_example():
    clips = prepare(torch.randn(2, 8000), fs=8000, target_fs=16000, lengths=[8000, 4000])
    assert [c.shape[0] for c in clips] == [16000, 8000]


# ============================================================================ prepare: errors


def test_prepare_empty_clip_names_index_and_id():
    clips = [torch.randn(1600), torch.zeros(0), torch.randn(1600)]
    with pytest.raises(AudioError, match=r"preds\[1\]: the clip is empty"):
        prepare(clips, 16000, None)
    with pytest.raises(AudioError, match=r"preds\[1\] \(b\.wav\): the clip is empty"):
        prepare(clips, 16000, None, names=["a.wav", "b.wav", "c.wav"])


def test_prepare_zero_length_in_lengths_is_an_empty_clip():
    with pytest.raises(AudioError, match=r"preds\[1\]: the clip is empty"):
        prepare(torch.randn(2, 1600), 16000, None, lengths=[1600, 0])


@pytest.mark.parametrize(
    "preds", [[], (), torch.zeros(0, 16000), np.zeros((0, 100), dtype=np.float32)], ids=["list", "tuple", "tensor", "numpy"]
)
def test_prepare_empty_batch(preds):
    with pytest.raises(AudioError, match=r"^preds: the batch is empty"):
        prepare(preds, 16000, 16000)


def test_prepare_shorter_than_min_seconds():
    clips = [torch.randn(16000), torch.randn(1599), torch.randn(1600)]
    with pytest.raises(AudioError, match=r"preds\[1\] \(short\): the clip is 0\.100 s long, shorter than .* 0\.1 s"):
        prepare(clips, 16000, None, min_seconds=0.1, names=["long", "short", "exact"])
    # exactly the minimum is fine, at any rate
    assert prepare([torch.randn(1600)], 16000, None, min_seconds=0.1)[0].shape[0] == 1600
    assert prepare([torch.randn(800)], 8000, 16000, min_seconds=0.1)[0].shape[0] == 1600


def test_prepare_min_seconds_is_checked_at_the_input_rate_before_resampling():
    with pytest.raises(AudioError, match=r"preds\[0\]: the clip is 0\.050 s long"):
        prepare(torch.randn(1, 400), 8000, 16000, min_seconds=0.1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_prepare_nan_inf_names_the_item(bad):
    clips = [torch.randn(1600) * 0.1 for _ in range(3)]
    clips[2][77] = bad
    with pytest.raises(AudioError, match=r"preds\[2\] \(c\): the clip has 1 NaN/Inf sample"):
        prepare(clips, 16000, None, names=["a", "b", "c"])
    x = torch.stack(clips)
    with pytest.raises(AudioError, match=r"preds\[2\]: the clip has 1 NaN/Inf"):
        prepare(x, 16000, None)
    x[2, 77] = 0.0
    x[1, 1500:] = bad  # beyond the length: never seen
    assert len(prepare(x, 16000, None, lengths=[1600, 1500, 1600])) == 3


def test_prepare_wrong_rank():
    with pytest.raises(AudioError, match=r"^preds: expected shape \(T,\) or \(B, T\), got \(2, 2, 1600\)"):
        prepare(torch.randn(2, 2, 1600), 16000, None)
    with pytest.raises(AudioError, match=r"^preds: expected shape .* got \(\)"):
        prepare(torch.tensor(0.5), 16000, None)
    with pytest.raises(AudioError, match=r"preds\[1\] \(stereo\): expected a 1-D clip, got shape \(2, 1600\).*mean"):
        prepare([torch.randn(1600), np.random.randn(2, 1600)], 16000, None, names=["mono", "stereo"])
    with pytest.raises(AudioError, match=r"target\[0\]: expected a 1-D clip, got shape \(\)"):
        prepare([torch.tensor(1.0)], 16000, None, arg="target")


def test_prepare_refuses_non_audio():
    with pytest.raises(AudioError, match=r"preds\[1\]: expected a torch.Tensor or numpy array, got list"):
        prepare([torch.randn(1600), [0.1] * 1600], 16000, None)
    with pytest.raises(AudioError, match=r"^preds: expected a torch.Tensor or numpy array, got str"):
        prepare("a.wav", 16000, None)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([1600], r"^preds: 1 lengths for a batch of 2 clips"),
        ([1600, 1600, 1600], r"^preds: 3 lengths for a batch of 2 clips"),
        ([1600, 1601], r"preds\[1\] \(b\): length 1601 is not a whole number of samples in \[0, 1600\]"),
        ([-1, 1600], r"preds\[0\] \(a\): length -1 is not"),
        ([1600, 800.5], r"preds\[1\] \(b\): length 800\.5 is not"),
        ([float("nan"), 1600], r"preds\[0\] \(a\): length nan is not"),
        ([1600, float("inf")], r"preds\[1\] \(b\): length inf is not"),
        (["1600", "800"], r"^preds: lengths= must be whole numbers"),
    ],
    ids=["too-few", "too-many", "too-long", "negative", "fraction", "nan", "inf", "strings"],
)
def test_prepare_bad_lengths(lengths, message):
    with pytest.raises(AudioError, match=message):
        prepare(torch.randn(2, 1600), 16000, None, lengths=lengths, names=["a", "b"])


def test_prepare_lengths_with_a_list_is_refused():
    with pytest.raises(AudioError, match="lengths= is only for a padded 2-D tensor"):
        prepare([torch.randn(1600)], 16000, None, lengths=[1600])


def test_prepare_custom_arg_name_in_messages():
    with pytest.raises(AudioError, match=r"^target: the batch is empty"):
        prepare([], 16000, None, arg="target")


def test_prepare_all_zero_clip_warns_names_it_and_is_returned():
    clips = [speechlike(0.2, 16000, 0), torch.zeros(3200)]
    with pytest.warns(SilentAudioWarning, match=r"preds\[1\] \(silence\.wav\): the clip is all zeros") as rec:
        out = prepare(clips, 16000, 16000, names=["speech.wav", "silence.wav"])
    assert len(rec) == 1  # only the silent one
    assert len(out) == 2 and torch.equal(out[1], torch.zeros(3200))
    # int16 zeros are silence too; the warning points at the caller's line
    with pytest.warns(SilentAudioWarning) as rec:
        prepare(np.zeros(1600, dtype=np.int16), 16000, None)
    assert rec[0].filename == __file__


def test_prepare_speech_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare([speechlike(0.3, 16000, s) for s in range(3)], 16000, 16000)


# ============================================================================ resample


@pytest.mark.parametrize(
    ("n", "orig", "new"),
    [
        (16000, 48000, 16000),
        (16001, 48000, 16000),
        (44100, 44100, 16000),
        (12345, 44100, 16000),
        (8000, 8000, 16000),
        (777, 16000, 22050),
        (1, 16000, 48000),
        (7, 48000, 16000),
        (1000, 16000, 16000),
    ],
)
def test_resample_length_is_ceil(n, orig, new):
    y = resample(torch.randn(n), orig, new)
    assert y.shape == (math.ceil(n * new / orig),)


RATES = [(48000, 16000), (44100, 16000), (8000, 16000), (16000, 22050), (22050, 16000)]


@pytest.mark.parametrize(("orig", "new"), RATES)
def test_resample_equals_torchaudio_defaults(orig, new):
    """Same filter as torchaudio.functional.resample with its defaults. functional builds
    the kernel in the input's dtype, the transform (and so torchmos) in float64 rounded to
    float32: they differ by float32 rounding (~1e-6), far below the 1e-4 parity budget."""
    x = speechlike(0.4, orig, 0)
    torch.testing.assert_close(resample(x, orig, new), torchaudio.functional.resample(x, orig, new),
                               rtol=0, atol=2e-5)
    batch = torch.stack([x, speechlike(0.4, orig, 1)])
    torch.testing.assert_close(resample(batch, orig, new), torchaudio.functional.resample(batch, orig, new),
                               rtol=0, atol=2e-5)


@pytest.mark.parametrize(("orig", "new"), RATES)
def test_resample_is_bit_identical_to_the_reference_transform(orig, new):
    """DistillMOS' reference code resamples with torchaudio.transforms.Resample(sr, 16000)."""
    x = speechlike(0.4, orig, 2)
    assert torch.equal(resample(x, orig, new), torchaudio.transforms.Resample(orig, new)(x))


def test_resample_keeps_dtype_and_cached_module_is_not_shared_across_dtypes():
    x32 = speechlike(0.3, 44100, 2)
    x64 = x32.double()
    y32 = resample(x32, 44100, 16000)
    y64 = resample(x64, 44100, 16000)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, torchaudio.functional.resample(x64, 44100, 16000), rtol=0, atol=1e-12)
    again = resample(x32, 44100, 16000)  # after a float64 call on the same rates
    assert again.dtype == torch.float32 and torch.equal(again, y32)
    assert torch.equal(resample(x32.half(), 44100, 16000).float(),
                       torchaudio.transforms.Resample(44100, 16000).half()(x32.half()).float())


def test_resample_same_rate_is_identity():
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x
    assert resample(x, 16000, 16000.0) is x


def _bandlimited(n: int, fs: int, fmax: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / fs
    freqs = 50 + torch.rand(24, generator=g, dtype=torch.float64) * (fmax - 50)
    phases = torch.rand(24, generator=g, dtype=torch.float64) * 2 * math.pi
    x = torch.sin(2 * math.pi * freqs[:, None] * t + phases[:, None]).sum(0)
    return (x / x.abs().max() * 0.9).float()


@pytest.mark.parametrize(
    ("fs", "other"),
    [(16000, 8000), (16000, 22050), (16000, 44100), (16000, 48000), (44100, 16000), (8000, 11025)],
)
def test_resample_there_and_back_recovers_a_bandlimited_signal(fs, other):
    """julius-style property: x -> other rate -> back ~= x when x is band-limited well
    below both Nyquist frequencies (the filter passband)."""
    fmax = 0.35 * min(fs, other)
    x = _bandlimited(fs // 2, fs, fmax, seed=fs + other)
    y = resample(resample(x, fs, other), other, fs)
    n = x.shape[0]
    assert y.shape[0] == math.ceil(math.ceil(n * other / fs) * fs / other)  # >= n (ceil twice)
    y = y[:n]
    edge = 64  # the resampler zero-pads at the ends
    err = (y - x)[edge:-edge]
    snr = 10 * torch.log10(x[edge:-edge].pow(2).mean() / err.pow(2).mean())
    assert snr > 40, f"round trip {fs}->{other}->{fs}: SNR {snr:.1f} dB"


def test_resample_round_trip_on_speechlike_signal():
    x = speechlike(0.5, 16000, 5)  # harmonics below 5 kHz, plus some broadband frication
    y = resample(resample(x, 16000, 48000), 48000, 16000)
    err = (y - x)[64:-64]
    snr = 10 * torch.log10(x[64:-64].pow(2).mean() / err.pow(2).mean())
    assert snr > 30, f"SNR {snr:.1f} dB"


def test_resample_removes_content_above_the_new_nyquist():
    fs = 48000
    t = torch.arange(fs // 2) / fs
    tone = torch.sin(2 * math.pi * 12000 * t)  # above 8 kHz: must not alias into 16 kHz audio
    y = resample(tone, fs, 16000)
    assert y[100:-100].abs().max() < 1e-2


# ============================================================================ pad_batch


def test_pad_batch_shapes_lengths_and_zero_padding():
    clips = [torch.arange(1.0, 4.0), torch.arange(1.0, 6.0), torch.ones(1)]
    x, n = pad_batch(clips)
    assert x.shape == (3, 5) and n.tolist() == [3, 5, 1] and n.dtype == torch.long
    assert x[0].tolist() == [1, 2, 3, 0, 0]
    assert x[2].tolist() == [1, 0, 0, 0, 0]
    x, n = pad_batch(clips, multiple=4)
    assert x.shape == (3, 8) and x[1, 5:].abs().sum() == 0
    x, _ = pad_batch([torch.ones(8, dtype=torch.float64)], multiple=4)
    assert x.shape == (1, 8) and x.dtype == torch.float64


def test_pad_batch_round_trips_with_prepare_lengths():
    clips = [speechlike(s, 16000, i) for i, s in enumerate([0.1, 0.35, 0.2])]
    x, n = pad_batch(clips, multiple=320)
    assert x.shape[1] % 320 == 0
    back = prepare(x, 16000, None, lengths=n)
    for a, b in zip(clips, back):
        assert torch.equal(a, b)


def test_pad_batch_empty():
    with pytest.raises(AudioError, match="no clips"):
        pad_batch([])


# ============================================================================ read


@pytest.mark.parametrize(
    ("subtype", "atol"),
    [("PCM_U8", 2**-7), ("PCM_16", 2**-15), ("PCM_24", 2**-23), ("PCM_32", 2**-31), ("FLOAT", 0), ("DOUBLE", 0)],
)
def test_read_wav_subtypes(tmp_path, subtype, atol):
    x = speechlike(0.25, 16000, 0).numpy()
    p = _write(tmp_path / "a.wav", x, 16000, subtype=subtype)
    assert sf.info(str(p)).subtype == subtype
    y, fs = read(p)
    assert fs == 16000 and y.dtype == torch.float32 and y.shape == (4000,)
    torch.testing.assert_close(y, torch.from_numpy(x), rtol=0, atol=max(atol, 1e-7))


def test_read_int16_wav_matches_to_float(tmp_path):
    pcm = _pcm16(0.25)
    p = _write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    y, _ = read(str(p))
    assert torch.equal(y, to_float(pcm))


def test_read_24bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    ints = rng.integers(-(2**23), 2**23, size=4000)
    p = _write(tmp_path / "a.wav", (ints * 256).astype(np.int32), 8000, subtype="PCM_24")
    y, fs = read(p)
    assert fs == 8000
    torch.testing.assert_close(y, torch.from_numpy(ints / 2**23).float(), rtol=0, atol=0)


def test_read_flac_is_lossless(tmp_path):
    pcm = _pcm16(0.3, 22050)
    p = _write(tmp_path / "a.flac", pcm, 22050)
    y, fs = read(p)
    assert fs == 22050
    assert torch.equal(y, to_float(pcm))


@pytest.mark.parametrize(("fmt", "subtype", "ext", "fs"), [("OGG", "VORBIS", "ogg", 16000), ("OGG", "OPUS", "opus", 48000),
                                                           ("MP3", "MPEG_LAYER_III", "mp3", 16000)])
def test_read_lossy_formats_if_supported(tmp_path, fmt, subtype, ext, fs):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile build ({sf.__libsndfile_version__}) has no {fmt}/{subtype}")
    x = speechlike(1.0, fs, 0).numpy()
    p = _write(tmp_path / f"a.{ext}", x, fs, format=fmt, subtype=subtype)
    y, got_fs = read(p)
    assert got_fs == fs and y.dtype == torch.float32
    assert abs(y.shape[0] - x.shape[0]) <= 0.05 * fs  # codec delay/padding at most
    n = min(y.shape[0], x.shape[0])
    # lossy: the waveform is close, not equal (libsndfile removes the codec delay)
    assert float(np.corrcoef(x[:n], y.numpy()[:n])[0, 1]) > 0.9
    assert ext in {e.lstrip(".") for e in audio.audio_extensions()}


def test_read_stereo_is_channel_mean(tmp_path):
    left, right = speechlike(0.25, 16000, 0).numpy(), speechlike(0.25, 16000, 1).numpy()
    p = _write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    y, fs = read(p)
    assert y.shape == (4000,) and fs == 16000
    torch.testing.assert_close(y, torch.from_numpy((left + right) / 2), rtol=0, atol=1e-7)
    six = np.stack([left] * 3 + [right] * 3, 1)
    y6, _ = read(_write(tmp_path / "six.flac", six, 16000))
    assert y6.shape == (4000,)


def test_read_missing_file(tmp_path):
    p = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=rf"^{p}: no such file"):
        read(p)


def test_read_directory(tmp_path):
    d = tmp_path / "folder.wav"
    d.mkdir()
    with pytest.raises(AudioError, match=rf"^{d}: is a directory"):
        read(d)


def test_read_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.wav"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(AudioError, match=rf"^{p}: cannot be read as audio"):
        read(p)
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=rf"^{p}: cannot be read as audio"):
        read(p)


def test_read_wav_truncated_in_its_data_chunk(tmp_path):
    """libsndfile silently reads a truncated WAV short (the header says 16000 frames, it
    returns what is left, without an error); read() must refuse it, naming the file."""
    good = _write(tmp_path / "good.wav", _pcm16(1.0), 16000, subtype="PCM_16").read_bytes()
    assert len(good) == 44 + 32000
    p = tmp_path / "cut.wav"
    for data_bytes, present in [(20000, 10000), (20001, 10000), (0, 0)]:
        p.write_bytes(good[: 44 + data_bytes])
        with pytest.raises(AudioError, match=rf"^{p}: truncated file: the header declares 16000 frames .* only {present} are present"):
            read(p)
    # through a Kaldi pipe too
    p.write_bytes(good[:30000])
    with pytest.raises(AudioError, match="truncated file"):
        read(f"cat {shlex.quote(str(p))} |")


def test_read_stereo_24bit_wav_truncated(tmp_path):
    x = np.stack([speechlike(0.5, 16000, 0).numpy()] * 2, 1)
    good = _write(tmp_path / "g.wav", x, 16000, subtype="PCM_24").read_bytes()
    p = tmp_path / "cut.wav"
    p.write_bytes(good[: len(good) - 6 * 100 - 3])  # 100.5 frames missing
    with pytest.raises(AudioError, match="declares 8000 frames .* only 7899 are present"):
        read(p)


def test_read_wav_with_trailing_chunk_is_not_truncated(tmp_path):
    good = _write(tmp_path / "g.wav", _pcm16(0.25), 16000, subtype="PCM_16").read_bytes()
    extra = b"LIST" + struct.pack("<I", 10) + b"INFOabcdef"
    riff = struct.pack("<I", len(good) - 8 + len(extra))
    p = tmp_path / "list.wav"
    p.write_bytes(good[:4] + riff + good[8:] + extra)
    y, _ = read(p)
    assert y.shape == (4000,)


def test_read_streamed_wav_with_placeholder_sizes(tmp_path):
    """Writers that stream to a pipe (ffmpeg, sox) cannot seek back to fill in the sizes and
    write 0xFFFFFFFF; that is not truncation."""
    pcm = _pcm16(0.25)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    head = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    head += b"data" + struct.pack("<I", 0xFFFFFFFF)
    p = tmp_path / "stream.wav"
    p.write_bytes(head + pcm.tobytes())
    y, fs = read(p)
    assert fs == 16000
    assert torch.equal(y, to_float(pcm))
    y2, _ = read(f"cat {shlex.quote(str(p))} |")
    assert torch.equal(y2, y)


def test_read_truncated_flac(tmp_path):
    good = _write(tmp_path / "g.flac", _pcm16(1.0), 16000).read_bytes()
    p = tmp_path / "cut.flac"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(AudioError, match=rf"^{p}: "):
        read(p)


def test_read_zero_frame_file(tmp_path):
    p = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=rf"^{p}: the file holds no audio samples"):
        read(p)
    p = _write(tmp_path / "empty.flac", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match=rf"^{p}: "):
        read(p)


def test_read_kaldi_pipe_entry(tmp_path):
    p = _write(tmp_path / "with space" / "a.wav", _pcm16(0.25), 16000, subtype="PCM_16")
    direct, fs = read(p)
    for entry in (f"cat {shlex.quote(str(p))} |", f"cat {shlex.quote(str(p))}|", f"cat {shlex.quote(str(p))} |  "):
        y, fs2 = read(entry)
        assert fs2 == fs and torch.equal(y, direct)
    # a real conversion in the pipe: stereo float, via python
    st = _write(tmp_path / "st.flac", np.stack([_pcm16(0.25, seed=1), _pcm16(0.25, seed=2)], 1), 16000)
    cmd = f"{shlex.quote(sys.executable)} -c 'import sys; sys.stdout.buffer.write(open(sys.argv[1], \"rb\").read())' {shlex.quote(str(st))} |"
    y, _ = read(cmd)
    assert y.shape == (4000,)


def test_read_failing_pipe(tmp_path):
    with pytest.raises(AudioError, match=r"the pipe command .* failed \(exit 3\): oops"):
        read("sh -c 'echo oops >&2; exit 3' |")
    with pytest.raises(AudioError, match=r"the pipe command .* failed"):
        read(f"cat {shlex.quote(str(tmp_path / 'missing.wav'))} |")
    with pytest.raises(AudioError, match=r"^echo not audio \|: cannot be read as audio"):
        read("echo not audio |")
    with pytest.raises(AudioError, match="cannot be read as audio"):
        read("true |")  # succeeds, writes nothing


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_read_named_pipe(tmp_path):
    """A FIFO path, as bash's process substitution <(sox ... -t wav -) gives: not seekable."""
    src = _write(tmp_path / "a.wav", _pcm16(0.25), 16000, subtype="PCM_16")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as f:
            f.write(src.read_bytes())

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        y, fs = read(fifo)
    finally:
        t.join(5)
    assert fs == 16000 and torch.equal(y, read(src)[0])


def test_audio_entry_reads(tmp_path):
    p = _write(tmp_path / "a.wav", _pcm16(0.25), 16000, subtype="PCM_16")
    y, fs = AudioEntry("a", str(p)).read()
    assert fs == 16000 and y.shape == (4000,)


# ============================================================================ find_audio


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "enhanced"
    pcm = _pcm16(0.1)
    _write(root / "a.wav", pcm, subtype="PCM_16")
    _write(root / "spk1" / "b.flac", pcm)
    _write(root / "spk1" / "deep" / "c.WAV", pcm, format="WAV", subtype="PCM_16")
    (root / "notes.txt").write_text("not audio\n")
    (root / "spk1" / "meta.json").write_text("{}")
    (root / "spk1" / "deep" / "README").write_text("")
    (root / "emptydir").mkdir()
    return root


def test_find_audio_folder_recursion(tree):
    entries = find_audio([tree])
    assert [e.id for e in entries] == ["a", "spk1/b", "spk1/deep/c"]
    assert [Path(e.source) for e in entries] == [tree / "a.wav", tree / "spk1" / "b.flac", tree / "spk1" / "deep" / "c.WAV"]
    assert all(isinstance(e, AudioEntry) for e in entries)
    assert entries[1].read()[0].shape == (1600,)


def test_find_audio_ids_match_across_folders(tree, tmp_path):
    clean = tmp_path / "clean"
    _write(clean / "spk1" / "b.wav", _pcm16(0.1), subtype="PCM_16")
    ids = {e.id for e in find_audio([clean])}
    assert ids == {"spk1/b"} and ids <= {e.id for e in find_audio([tree])}


def test_find_audio_accepts_a_single_path(tree):
    assert [e.id for e in find_audio(tree)] == ["a", "spk1/b", "spk1/deep/c"]
    assert [e.id for e in find_audio(str(tree))] == ["a", "spk1/b", "spk1/deep/c"]


@pytest.mark.parametrize("which", ["emptydir", "only-text"])
def test_find_audio_folder_without_audio(tree, tmp_path, which):
    d = tree / "emptydir"
    if which == "only-text":
        d = tmp_path / "texts"
        d.mkdir()
        (d / "a.txt").write_text("x")
        (d / "b.csv").write_text("x")
    with pytest.raises(AudioError, match=rf"^{d}: the folder holds no audio files \(looked for .*\.wav"):
        find_audio([d])


def test_find_audio_missing_input(tmp_path):
    with pytest.raises(AudioError, match=rf"^{tmp_path / 'nope'}: no such file or folder"):
        find_audio([tmp_path / "nope"])
    with pytest.raises(AudioError, match=r"no such file or folder"):
        find_audio([tmp_path / "nope.scp"])


def test_find_audio_single_file(tmp_path):
    p = _write(tmp_path / "x" / "utt.flac", _pcm16(0.1))
    (e,) = find_audio([p])
    assert e.id == str(tmp_path / "x" / "utt") and e.source == str(p)


def test_find_audio_kaldi_wav_scp(tmp_path, monkeypatch):
    data = tmp_path / "data" / "test"
    _write(data / "wav" / "u2.wav", _pcm16(0.1, seed=2), subtype="PCM_16")
    absolute = _write(tmp_path / "abs" / "u1.flac", _pcm16(0.1, seed=1))
    cwd = tmp_path / "recipe"
    _write(cwd / "downloads" / "u4.wav", _pcm16(0.1, seed=4), subtype="PCM_16")
    scp = data / "wav.scp"
    scp.write_text(
        f"spk1-utt1 {absolute}\n"
        "spk1-utt2 wav/u2.wav\n"  # not in the cwd: relative to the scp's folder
        f"spk2-utt3 cat {shlex.quote(str(absolute))} |\n"
        "spk2-utt4 downloads/u4.wav\n"  # exists in the cwd: kept (the Kaldi convention)
        "\n"
    )
    monkeypatch.chdir(cwd)
    entries = find_audio([scp])
    assert [e.id for e in entries] == ["spk1-utt1", "spk1-utt2", "spk2-utt3", "spk2-utt4"]
    assert entries[0].source == str(absolute)
    assert Path(entries[1].source) == data / "wav" / "u2.wav"
    assert entries[2].source == f"cat {shlex.quote(str(absolute))} |"
    assert entries[3].source == "downloads/u4.wav"
    audio_of = [e.read()[0] for e in entries]
    assert torch.equal(audio_of[0], audio_of[2])  # the pipe entry reads the same file
    assert all(a.shape == (1600,) for a in audio_of)


def test_find_audio_kaldi_ark_entry_points_to_espnet(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("utt1 /data/a.wav\nutt2 /data/raw/data_1.ark:123456\n")
    with pytest.raises(AudioError, match=rf"^{scp}:2: '/data/raw/data_1.ark:123456' is a Kaldi ark offset.*torchmos\.adapters\.espnet"):
        find_audio([scp])


def test_find_audio_malformed_scp_line(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("utt1 /data/a.wav\nlonely-id\n")
    with pytest.raises(AudioError, match=rf"^{scp}:2: expected '<utt-id> <path>'"):
        find_audio([scp])


def test_find_audio_plain_list(tmp_path, monkeypatch):
    a = _write(tmp_path / "set" / "a.wav", _pcm16(0.1), subtype="PCM_16")
    _write(tmp_path / "set" / "sub" / "b.flac", _pcm16(0.1))
    lst = tmp_path / "set" / "files.txt"
    lst.write_text(f"# my test set\n{a}\n\nsub/b.flac\n")
    monkeypatch.chdir(tmp_path)
    entries = find_audio([lst])
    assert [e.source for e in entries] == [str(a), str(tmp_path / "set" / "sub" / "b.flac")]
    assert [e.id for e in entries] == [str(tmp_path / "set" / "a"), str(tmp_path / "set" / "sub" / "b")]
    assert all(e.read()[1] == 16000 for e in entries)


@pytest.mark.parametrize("name", ["empty.txt", "wav.scp"])
def test_find_audio_empty_list(tmp_path, name):
    p = tmp_path / name
    p.write_text("\n# nothing\n")
    with pytest.raises(AudioError, match=rf"^{p}: the list holds no entries"):
        find_audio([p])


def test_find_audio_repeated_files_are_kept_and_numbered(tree, tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text(f"a {tree / 'a.wav'}\nb2 {tree / 'spk1' / 'b.flac'}\n")
    entries = find_audio([tree, tree, scp])
    ids = [e.id for e in entries]
    assert len(set(ids)) == len(ids) == 8
    assert ids[:6] == ["a", "spk1/b", "spk1/deep/c", "a#2", "spk1/b#2", "spk1/deep/c#2"]
    assert ids[6:] == ["a#3", "b2"] and entries[-1].source == str(tree / "spk1" / "b.flac")
    # two lines of one scp giving one id to different files: a Kaldi id must be unique
    scp.write_text(f"a {tree / 'a.wav'}\na {tree / 'spk1' / 'b.flac'}\n")
    with pytest.raises(AudioError, match=rf"^{scp}:2: the utterance id 'a' already names another entry on line 1"):
        find_audio([scp])


def test_audio_extensions():
    exts = audio.audio_extensions()
    assert {".wav", ".flac"} <= exts
    assert ".raw" not in exts  # headerless: the rate would be a guess
    assert ".txt" not in exts and ".scp" not in exts
    assert all(e.startswith(".") and e == e.lower() for e in exts)
