"""No input can exhaust memory: odd sample rates, the filter cache, long files.

The memory checks run in a fresh interpreter: after warming up they reset its peak resident
set (``VmHWM``, what ``getrusage().ru_maxrss`` reports) and read how far the work raises it;
torch allocates outside Python's heap, so ``tracemalloc`` cannot see it. The child caps its address space a couple
of GB above what it has mapped, so code that would build a multi-GB filter fails there at
once instead of taking the machine down.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from tests.helpers import speechlike
from torchmos import audio
from torchmos.audio import AudioEntry, AudioError, prepare, read, resample

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = [8000, 11025, 12000, 22050, 24000, 32000, 44100, 48000, 88200, 96000]
# no common factor with 16 kHz (a corrupt or odd header): torchaudio's kernel for each is
# 16000 x (o + 2*width) taps, 0.5 to 24 GB; 3839xx are the worst cases up to 384 kHz
ODD = [44101, 7919, 1001, 96001, 383999, 383997, 383993, 383987]


@pytest.fixture
def fresh_filters(monkeypatch):
    """An empty filter cache for the test, so that patched thresholds build new filters (the
    cache and the thresholds live in torchmos.audio.resampling, where resample() reads them)."""
    monkeypatch.setattr(audio.resampling, "_FILTERS", audio._FilterCache(audio.CACHE_MAX_BYTES))


def _child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRELUDE = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from torchmos import audio

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

def start_peak():
    # reset the peak resident set (VmHWM, what ru_maxrss reports) to the current one
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not allowed here: measure from the current size, which overstates
        pass
    return status_mb("VmRSS")

def peak_mb():
    return status_mb("VmHWM")

def cap_address_space(extra=2 << 30):
    want = int(status_mb("VmSize") * 2**20) + extra
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft == resource.RLIM_INFINITY or want < soft:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
"""

RATES_CHILD = PRELUDE + """
audio.resample(torch.zeros(4800), 48000, 16000)  # torchaudio, conv1d and the allocator warm
cap_address_space()
base = start_peak()
rows = []
for fs in map(int, sys.argv[1:]):
    x = torch.randn(fs) * 0.1  # one second
    t = time.perf_counter()
    n = audio.resample(x, fs, 16000).shape[0]
    rows.append([fs, time.perf_counter() - t, peak_mb() - base, n])
cache = audio.resampling._FILTERS.nbytes
print(json.dumps({"rows": rows, "cache_bytes": cache}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_odd_sample_rates_resample_in_bounded_memory():
    """A second at 44101 Hz used to build a 2.8 GB kernel (5.6 GB while computing it); a
    rate prime to 16 kHz took 24 s and 4.8 GB per second of audio. Now each such rate
    costs a table of at most 18 MB, and the cache keeps at most CACHE_MAX_BYTES of them."""
    out = _child(RATES_CHILD, *map(str, ODD))
    rows = {fs: (sec, mb, n) for fs, sec, mb, n in out["rows"]}
    print("\nrate Hz   seconds   peak growth MB (cumulative)")
    for fs, (sec, mb, _) in rows.items():
        print(f"{fs:>7} {sec:9.3f} {mb:10.1f}")
    assert all(n == 16000 for _, _, n in rows.values())
    assert rows[ODD[0]][1] < 48, f"one odd rate grew the peak by {rows[ODD[0]][1]:.0f} MB"
    worst = max(mb for _, mb, _ in rows.values())
    assert worst < audio.CACHE_MAX_BYTES / 2**20 + 80, f"peak grew by {worst:.0f} MB over {len(ODD)} rates"
    assert max(sec for sec, _, _ in rows.values()) < 10
    assert 0 < out["cache_bytes"] <= audio.CACHE_MAX_BYTES


def test_filter_table_size_is_bounded_for_every_rate_from_1_to_384_khz():
    """Sizes as _build_filter sizes them (no filter is built here): torchaudio's dense
    kernel only up to DENSE_MAX_TAPS, the compact table under 18 MB, for every integer rate
    from 1 kHz to 384 kHz to 16 kHz; the usual rates keep torchaudio's kernel."""
    worst_dense = worst_table = 0
    dense = set()
    for fs in range(1000, 384001):
        g = math.gcd(fs, 16000)
        o, n = fs // g, 16000 // g
        width = math.ceil(6 * o / (min(o, n) * 0.99))
        taps = n * (2 * width + o)
        if taps <= audio.DENSE_MAX_TAPS:
            dense.add(fs)
            worst_dense = max(worst_dense, taps)
        else:
            worst_table = max(worst_table, n * (2 * width + 2) * 4)
    assert set(COMMON) <= dense
    assert worst_dense * 4 <= 4 << 20
    assert worst_table < 18 << 20 < audio.TABLE_MAX_BYTES


def test_common_rates_keep_torchaudios_kernel_bit_identical(fresh_filters):
    for fs in COMMON:
        x = speechlike(0.3, fs, 1)
        assert torch.equal(resample(x, fs, 16000), torchaudio.transforms.Resample(fs, 16000)(x)), fs
        assert audio.resampling._FILTERS.get(fs, 16000, torch.float32, x.device, "x").dense is not None


@pytest.mark.parametrize(("orig", "new"), [(1009, 1000), (44100, 16000), (16000, 22050), (7919, 160), (1013, 1600),
                                           (8000, 16000), (48000, 16000)])
def test_compact_filter_is_torchaudios_filter(orig, new, monkeypatch, fresh_filters):
    """Forced onto the compact path, rates whose torchaudio kernel is small enough to
    compare: the table holds torchaudio's taps bit for bit (float32), everything it leaves
    out is zero there, and outputs agree to float32 rounding of the sums."""
    monkeypatch.setattr(audio.resampling, "DENSE_MAX_TAPS", 0)
    ref32 = torchaudio.transforms.Resample(orig, new)
    filt = audio.resampling._FILTERS.get(orig, new, torch.float32, torch.device("cpu"), "x")
    assert filt.dense is None
    dense = torch.zeros(filt.n, filt.span + filt.o)
    for p in range(filt.n):
        a = int(filt.starts[p])
        dense[p, a : a + filt.taps.shape[1]] = filt.taps[p]
    k = ref32.kernel[:, 0]
    assert torch.equal(dense[:, : k.shape[1]], k) and not dense[:, k.shape[1] :].any()

    g = torch.Generator().manual_seed(orig)
    x = torch.rand(2, orig + 123, generator=g) * 2 - 1
    torch.testing.assert_close(resample(x, orig, new), ref32(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(resample(x[0], orig, new), ref32(x[0]), rtol=0, atol=1e-6)
    x64 = x.double()
    ref64 = torchaudio.transforms.Resample(orig, new, dtype=torch.float64)(x64)
    torch.testing.assert_close(resample(x64, orig, new), ref64, rtol=0, atol=1e-12)


def test_odd_rate_resamples_a_tone_cleanly(fresh_filters):
    fs, f0 = 44101, 1000.0
    t = torch.arange(fs, dtype=torch.float64)
    y = resample(torch.sin(2 * math.pi * f0 * t / fs).float(), fs, 16000)
    want = torch.sin(2 * math.pi * f0 * torch.arange(16000, dtype=torch.float64) / 16000).float()
    assert y.shape == (16000,)
    assert (y - want)[200:-200].abs().max() < 1e-3
    assert audio.resampling._FILTERS.get(fs, 16000, torch.float32, y.device, "x").dense is None


@pytest.mark.parametrize("orig", [8000, 11025, 44100, 48000, 96000, 44101, 7919, 47952])
def test_block_wise_resample_equals_one_call(orig, monkeypatch, fresh_filters):
    """Signals longer than BLOCK_SAMPLES are resampled block by block, each with the
    filter's context on both sides: the result is the one-call result (torchaudio's, for
    the dense rates)."""
    g = torch.Generator().manual_seed(orig)
    x = torch.rand(2, 3 * orig + 17, generator=g) * 2 - 1
    whole = resample(x, orig, 16000)  # 96 kHz: longer than BLOCK_SAMPLES, already in blocks
    if orig in COMMON:
        ref = torchaudio.transforms.Resample(orig, 16000)(x)
        torch.testing.assert_close(whole, ref, rtol=0, atol=1e-6)  # observed: bit-identical
    for block in [4099, 30000]:
        with monkeypatch.context() as m:
            m.setattr(audio.resampling, "BLOCK_SAMPLES", block)
            torch.testing.assert_close(resample(x, orig, 16000), whole, rtol=0, atol=1e-6)
            torch.testing.assert_close(resample(x[1], orig, 16000), whole[1], rtol=0, atol=1e-6)


def test_block_wise_resample_float64_and_half(monkeypatch):
    x = speechlike(2.0, 44100, 3)
    whole64, whole16 = resample(x.double(), 44100, 16000), resample(x.half(), 44100, 16000)
    monkeypatch.setattr(audio.resampling, "BLOCK_SAMPLES", 25000)
    torch.testing.assert_close(resample(x.double(), 44100, 16000), whole64, rtol=0, atol=1e-12)
    torch.testing.assert_close(resample(x.half(), 44100, 16000).float(), whole16.float(), rtol=0, atol=2e-3)


def test_filter_cache_is_bounded_in_bytes_least_recent_first():
    cache = audio._FilterCache(3 << 19)  # 1.5 MB
    cpu = torch.device("cpu")

    def key(fs: int) -> tuple:
        return (fs, 16000, torch.float32, cpu)

    for fs in [44100, 22050, 8000, 48000, 11025, 96000, 12000]:  # 11025: 1.2 MB
        cache.get(fs, 16000, torch.float32, cpu, "x")
        assert cache.nbytes <= 3 << 19
        assert cache.nbytes == sum(f.nbytes for f in cache._items.values())
    assert key(44100) not in cache._items and key(22050) not in cache._items  # the oldest went
    assert key(12000) in cache._items and key(11025) in cache._items
    cache.get(8000, 16000, torch.float32, cpu, "x")  # used again: now the most recent
    cache.get(22050, 16000, torch.float32, cpu, "x")  # 0.6 MB more: 48000 and 11025 go
    assert list(cache._items) == [key(96000), key(12000), key(8000), key(22050)]
    small = audio._FilterCache(1 << 20)
    f = small.get(11025, 16000, torch.float32, cpu, "x")  # larger than the whole cache:
    assert f.nbytes > 1 << 20 and len(small) == 0 and small.nbytes == 0  # used, not kept


def test_cache_shared_between_threads_gives_the_same_answers(fresh_filters):
    clips = {fs: speechlike(0.5, fs, 0) for fs in [44100, 44101, 22050, 7919]}
    want = {fs: resample(x, fs, 16000) for fs, x in clips.items()}
    audio.resampling._FILTERS.clear()
    got: dict[tuple[int, int], torch.Tensor] = {}

    def work(i: int) -> None:
        rates = list(clips)
        for fs in rates[i:] + rates[:i]:
            got[(i, fs)] = resample(clips[fs], fs, 16000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 16 and all(torch.equal(y, want[fs]) for (_, fs), y in got.items())


def test_a_rate_beyond_any_bounded_filter_is_refused_naming_the_item():
    x = torch.zeros(1000)
    with pytest.raises(AudioError, match=r"^preds\[0\] \(a\.wav\): cannot resample 10000019 Hz to 16000 Hz.*"
                                         r"corrupt header.*standard rate"):
        prepare([x + 0.1, x], fs=10_000_019, target_fs=16000, names=["a.wav", "b.wav"])
    with pytest.raises(AudioError, match=r"^clip 3: cannot resample 16000 Hz to 10000019 Hz"):
        resample(x, 16000, 10_000_019, where="clip 3")
    with pytest.raises(AudioError, match=r"^input: the sample rate must be a positive whole number"):
        resample(x, 16000, -5)


def test_read_with_an_absurd_header_rate_names_the_file(tmp_path):
    p = tmp_path / "odd.wav"
    sf.write(p, np.zeros(2000, dtype=np.int16), 10_000_019, subtype="PCM_16")
    with pytest.raises(AudioError, match=rf"^{p}: cannot resample 10000019 Hz to 16000 Hz"):
        read(p, target_fs=16000)
    x, fs = read(p)  # reading it as it is stays possible
    assert fs == 10_000_019 and x.shape == (2000,)


# ============================================================================ block-wise read


def _noise_file(path: Path, fs: int, seconds: float, channels: int, subtype: str) -> Path:
    rng = np.random.default_rng(fs + channels)
    data = (rng.random((int(fs * seconds) + 17, channels)) * 1.8 - 0.9).astype(np.float32)
    sf.write(path, data, fs, subtype=subtype)
    return path


@pytest.mark.parametrize(
    ("fs", "channels", "subtype", "ext"),
    [(48000, 2, "PCM_16", "wav"), (44100, 1, "PCM_24", "flac"), (22050, 3, "FLOAT", "wav"),
     (8000, 1, "PCM_16", "wav"), (44101, 2, "PCM_16", "wav"), (16000, 2, "PCM_16", "wav")],
)
def test_read_in_blocks_with_target_fs_equals_reading_then_resampling(tmp_path, fs, channels, subtype, ext):
    p = _noise_file(tmp_path / f"a.{ext}", fs, 1.5, channels, subtype)
    data, _ = sf.read(p, dtype="float32", always_2d=True)
    native = torch.from_numpy(data).mean(dim=1) if channels > 1 else torch.from_numpy(data[:, 0].copy())
    want = resample(native, fs, 16000)
    frames = data.shape[0]
    for block in [777, 25000, audio.BLOCK_SAMPLES]:
        calls: list[tuple[int, int]] = []
        y, rate = read(p, target_fs=16000, block_frames=block, progress=lambda d, n, c=calls: c.append((d, n)))
        assert rate == 16000 and y.dtype == torch.float32 and y.shape == want.shape
        torch.testing.assert_close(y, want, rtol=0, atol=1e-6)
        assert [d for d, _ in calls] == [min(frames, (i + 1) * block) for i in range(-(-frames // block))]
        assert {n for _, n in calls} == {frames}
        x, rate = read(p, block_frames=block)
        assert rate == fs and torch.equal(x, native)


def test_read_in_blocks_keeps_its_errors(tmp_path):
    good = _noise_file(tmp_path / "g.flac", 16000, 1.0, 1, "PCM_16").read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(AudioError, match=rf"^{cut}: "):
        read(cut, target_fs=8000, block_frames=100)
    wav = _noise_file(tmp_path / "w.wav", 48000, 1.0, 2, "PCM_16").read_bytes()
    short = tmp_path / "short.wav"
    short.write_bytes(wav[: len(wav) - 5000])
    with pytest.raises(AudioError, match=rf"^{short}: truncated file: the header declares 48017 frames"):
        read(short, target_fs=16000, block_frames=1000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=rf"^{empty}: the file holds no audio samples"):
        read(empty, target_fs=8000)
    with pytest.raises(AudioError, match=r"target_fs"):
        read(tmp_path / "w.wav", target_fs=0)


def test_audio_entry_reads_at_a_target_rate_with_progress(tmp_path):
    p = _noise_file(tmp_path / "e.wav", 48000, 1.0, 1, "PCM_16")
    calls: list[tuple[int, int]] = []
    got = AudioEntry("e", str(p)).load(16000, progress=lambda d, n: calls.append((d, n)))
    assert got.rate == 16000 and got.samples.shape == (16006,) and calls[-1] == (48017, 48017)
    assert (got.file_rate, got.frames) == (48000, 48017)
    assert AudioEntry("e", str(p)).read()[1] == 48000


LONG_CHILD = PRELUDE + """
calls = []
def load(path):
    try:
        return audio.read(path, target_fs=16000, progress=lambda d, n: calls.append((d, n)))
    except TypeError:  # no block-wise path: what a caller had to do
        x, sr = audio.read(path)
        return audio.resample(x, sr, 16000), 16000

load(sys.argv[2])  # torchaudio, the filter, soundfile and the allocator warm
calls.clear()
cap_address_space()
base = start_peak()
t = time.perf_counter()
y, fs = load(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t, "growth_mb": peak_mb() - base,
                  "out_mb": y.numel() * 4 / 2**20, "fs": fs, "calls": calls[:1] + calls[-1:],
                  "ncalls": len(calls)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_a_long_file_is_read_and_resampled_in_bounded_memory(tmp_path):
    """Five minutes of 48 kHz stereo (58 MB of PCM): reading it whole and resampling it
    used to raise the peak by ~430 MB; block-wise, by the 16 kHz output (18 MB) plus a
    block's worth."""
    fs, frames = 48000, 48000 * 300
    big = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(big, "w", fs, 2, subtype="PCM_16") as f:
        for start in range(0, frames, 1 << 20):
            f.write(rng.integers(-8000, 8000, size=(min(1 << 20, frames - start), 2), dtype=np.int16))
    small = tmp_path / "small.wav"
    sf.write(small, np.zeros((4800, 2), np.int16), fs, subtype="PCM_16")
    out = _child(LONG_CHILD, str(big), str(small))
    print(f"\n5 min 48 kHz stereo -> 16 kHz: {out['seconds']:.2f} s, peak growth "
          f"{out['growth_mb']:.1f} MB for {out['out_mb']:.1f} MB of output, {out['ncalls']} progress calls")
    assert out["fs"] == 16000 and out["out_mb"] == frames // 3 * 4 / 2**20
    assert out["growth_mb"] < out["out_mb"] + 48
    assert out["ncalls"] > 10 and out["calls"][-1] == [frames, frames]


@pytest.mark.parametrize("fs", [1, 500, 999])
def test_rates_below_1khz_are_refused_naming_the_clip(fs):
    """A "1 Hz" header would make the 16 kHz output 16000 times the file: refused."""
    with pytest.raises(AudioError, match=rf"^clip 3: cannot resample {fs} Hz to 16000 Hz: rates below 1000 Hz"):
        audio.resample(torch.zeros(100), fs, 16000, where="clip 3")
