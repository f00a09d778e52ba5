"""Helpers shared by the test suites: ``from tests.helpers import speechlike``.

Everything here is deterministic (seeded) and needs nothing beyond torchmos' own
dependencies, so any test lane can use it.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["FileServer", "Route", "card", "free_port", "leftovers", "sha", "speechlike", "torch_zip"]

# F1, F2, F3 (Hz) and bandwidths of five vowels (a, i, u, e, o), adult male averages.
_FORMANTS = np.array(
    [[730.0, 1090.0, 2440.0], [270.0, 2290.0, 3010.0], [300.0, 870.0, 2240.0],
     [530.0, 1840.0, 2480.0], [570.0, 840.0, 2410.0]]
)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def speechlike(seconds: float, fs: int = 16000, seed: int = 0, level_db: float = -20.0) -> torch.Tensor:
    """A deterministic signal with the coarse structure of speech, as a float32 1-D tensor.

    Words of 2-4 syllables at about 4 syllables/s, separated by 80-250 ms pauses. Each
    syllable is a voiced harmonic segment whose f0 glides within 60-250 Hz (a slow
    intonation contour plus jitter), with harmonic amplitudes shaped by the formants of a
    vowel (resonances at F1-F3 on a -6 dB/octave tilt) and a raised-cosine amplitude
    envelope; some syllables start with a short fricative noise burst. The RMS level over
    the whole clip is ``level_db`` dBFS, the peak stays below 1.

    Not speech, but enough like it (pitch, formants, syllable rhythm, silences) for
    resamplers, VADs and quality models to behave as they would on speech.
    """
    n = int(round(seconds * fs))
    if n <= 0:
        return torch.zeros(0)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs

    # f0 contour: base pitch, slow intonation, declination and jitter, kept in 60-250 Hz.
    base = rng.uniform(90.0, 180.0)
    contour = (
        base * (1.0 + 0.25 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 2 * np.pi)))
        * (1.0 - 0.15 * t / max(seconds, 1e-9))
    )
    jitter = np.convolve(rng.standard_normal(n), np.hanning(max(3, fs // 50)), mode="same")
    f0 = np.clip(contour * (1.0 + 0.02 * jitter / (np.abs(jitter).max() + 1e-12)), 60.0, 250.0)
    phase = 2 * np.pi * np.cumsum(f0) / fs

    # Syllable plan: (start, end, vowel, fricative onset?) with pauses between words.
    voiced = np.zeros(n)
    frication = np.zeros(n)
    vowel_of = np.zeros(n, dtype=int)
    pos = int(rng.uniform(0.02, 0.08) * fs)
    while pos < n:
        for _ in range(rng.integers(2, 5)):  # one word
            length = int(rng.uniform(0.15, 0.3) * fs)
            end = min(n, pos + length)
            if end - pos < 8:
                break
            win = np.hanning(end - pos)
            voiced[pos:end] = np.maximum(voiced[pos:end], win * rng.uniform(0.6, 1.0))
            vowel_of[pos:end] = rng.integers(0, len(_FORMANTS))
            if rng.random() < 0.4:  # fricative onset, 30-70 ms
                k = min(end - pos, int(rng.uniform(0.03, 0.07) * fs))
                frication[pos : pos + k] = np.hanning(2 * k)[:k] * rng.uniform(0.1, 0.3)
            pos = end + int(rng.uniform(0.0, 0.03) * fs)
        pos += int(rng.uniform(0.08, 0.25) * fs)  # pause between words

    # Harmonics up to min(0.45 fs, 5 kHz), each weighted by the formant envelope at k f0(t).
    top = min(0.45 * fs, 5000.0)
    formants = _FORMANTS[vowel_of]  # (n, 3)
    x = np.zeros(n)
    for k in range(1, int(top // 60.0) + 1):
        fk = k * f0
        alive = fk < top
        if not alive.any():
            break
        resonance = np.sum(1.0 / (1.0 + ((fk[:, None] - formants) / (_BANDWIDTHS / 2)) ** 2), axis=1)
        amp = (0.2 + 2.0 * resonance) / k  # -6 dB/octave tilt, formant peaks ~20 dB up
        x += np.where(alive, amp * np.sin(k * phase), 0.0)
    x *= voiced

    # Fricatives: noise differentiated twice (energy towards high frequencies).
    hiss = np.diff(rng.standard_normal(n + 2), n=2)
    x += frication * hiss * (np.abs(x).max() + 1e-12) / (np.abs(hiss).max() + 1e-12)

    rms = np.sqrt(np.mean(x**2)) + 1e-12
    x *= 10.0 ** (level_db / 20.0) / rms
    peak = np.abs(x).max()
    if peak > 0.99:
        x *= 0.99 / peak
    return torch.from_numpy(x.astype(np.float32))


# ----------------------------------------------------------------------------- weights


def sha(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def card(urls=(), sha256=None, name="testcard", filename="weights.pt", package=None):
    """A model card for hub tests: its weights at ``urls``, with an optional checksum."""
    from torchmos.hub import ModelCard, WeightFile

    return ModelCard(name=name, family="test", title="a test card", summary="",
                     weights=WeightFile(filename=filename, urls=tuple(urls), sha256=sha256, package=package),
                     sample_rate=16000)


def torch_zip(seed: int = 0, size: int = 100) -> bytes:
    """A real torch checkpoint (zip format), different for each seed."""
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.randn(size, size, generator=g)}, "seed": seed}, buf)
    return buf.getvalue()


def leftovers(folder: Path) -> list[str]:
    """Files in a cache folder other than filelock's lock file."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


# ----------------------------------------------------------------------------- HTTP


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Route:
    """What :class:`FileServer` answers for one path."""

    body: bytes = b""
    status: int = 200
    delay: float = 0.0  # seconds to wait before answering
    content_length: int | None = None  # lie about the length (the body is sent, then close)


class FileServer:
    """A real ``http.server`` on 127.0.0.1 in a thread, serving bytes that a test sets.

    ``server.add("/w.pt", data)`` then ``server.url("/w.pt")``; ``server.gets["/w.pt"]``
    counts the GET requests that reached it. Unknown paths answer 404. Use as a context
    manager (or call :meth:`close`), e.g. through the ``file_server`` fixture.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with owner._lock:
                    owner.gets[self.path] += 1
                    route = owner.routes.get(self.path)
                if route is None:
                    self.send_error(404, "not found")
                    return
                if route.delay:
                    time.sleep(route.delay)
                if route.status != 200:
                    self.send_error(route.status)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                length = route.content_length if route.content_length is not None else len(route.body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def add(self, path: str, body: bytes = b"", **kw: object) -> str:
        """Serve ``body`` at ``path`` (options as in :class:`Route`); returns its URL."""
        with self._lock:
            self.routes[path] = Route(body=body, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# (seconds, rate, channels, format): several rates, a stereo file, a FLAC
ENGINE_GOOD = [(1.0, 16000, 1, "WAV"), (1.5, 8000, 1, "WAV"), (0.8, 44100, 2, "WAV"), (1.2, 22050, 1, "FLAC")]


def engine_corpus(d: Path) -> dict:
    """The scoring engines' test corpus in ``d``: ``good`` files (16-bit, the rates and
    formats of :data:`ENGINE_GOOD`), ``bad`` ones (not audio, missing, too short), and
    ``ref``: each good file's DistillMOS from one-process ``torchmos.functional``, in order."""
    import soundfile as sf

    import torchmos.functional as F
    from torchmos import audio, synth

    good = []
    for i, (sec, fs, ch, fmt) in enumerate(ENGINE_GOOD):
        x = synth.degrade(synth.speech_like(sec, fs, seed=i), fs, list(synth.DEGRADATIONS)[i], seed=i).numpy()
        if ch == 2:
            x = np.stack([x, 0.5 * np.roll(x, 7)], axis=1)
        p = d / f"c{i}.{fmt.lower()}"
        sf.write(p, x, fs, format=fmt, subtype="PCM_16")
        good.append(str(p))
    (d / "bad.wav").write_text("not audio")
    sf.write(d / "short.wav", synth.speech_like(0.05, 16000, seed=9).numpy(), 16000)
    bad = [str(d / "bad.wav"), str(d / "missing.wav"), str(d / "short.wav")]
    ref = []
    for p in good:
        x, fs = audio.read(p)
        ref.append(float(F.distillmos(x, fs=fs)[0]))
    return {"good": good, "bad": bad, "ref": ref}
