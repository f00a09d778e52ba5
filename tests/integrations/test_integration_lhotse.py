"""Lhotse: score_cuts on a real CutSet of generated recordings (cuts at offsets into longer
recordings, several rates, stereo, padding) against one-process torchmos.functional on the
samples each cut spans; failed cuts keep their reason; manifests written and resumed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

lhotse = pytest.importorskip("lhotse", reason="needs Lhotse: pip install -e '.[lhotse]'")

import torchmos.functional as F  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters.lhotse import score_cuts  # noqa: E402

TOL = 1e-5
# recording: (rate, channels, format); 4 s each
RECS = [(16000, 1, "WAV"), (22050, 1, "FLAC"), (8000, 2, "WAV")]
# cut spans as (start, duration) in 20 ms steps: whole samples at every rate above
SPANS = [(25, 62), (100, 75), (5, 190)]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("lhotse-recs")
    out = {}
    for i, (fs, ch, fmt) in enumerate(RECS):
        x = synth.degrade(synth.speech_like(4.0, fs, seed=i), fs, list(synth.DEGRADATIONS)[i + 1], seed=i).numpy()
        if ch == 2:
            x = np.stack([x, 0.6 * np.roll(x, 11)], axis=1)
        path = d / f"rec{i}.{fmt.lower()}"
        sf.write(path, x, fs, format=fmt, subtype="PCM_16")
        samples, _ = audio.read(path)  # what the file holds, channels averaged
        out[f"rec{i}"] = (lhotse.Recording.from_file(path, recording_id=f"rec{i}"), samples, fs)
    return out


def span_cuts(recordings: dict) -> tuple[list, list[float]]:
    """Cuts into each recording, and the score torchmos.functional gives the samples they span."""
    cuts, ref = [], []
    for rid, (rec, samples, fs) in recordings.items():
        for k, (start, dur) in enumerate(SPANS):
            s, n = start * fs // 50, dur * fs // 50
            assert s * 50 == start * fs and n * 50 == dur * fs
            channel = list(range(rec.num_channels)) if rec.num_channels > 1 else 0
            kind = lhotse.MultiCut if rec.num_channels > 1 else lhotse.MonoCut
            cuts.append(kind(id=f"{rid}-{k}", start=start / 50, duration=dur / 50, channel=channel, recording=rec))
            ref.append(float(F.distillmos(samples[s : s + n], fs=fs)[0]))
    return cuts, ref


def test_cuts_into_long_recordings_score_like_functional(recordings):
    cuts, ref = span_cuts(recordings)
    cutset = lhotse.CutSet.from_cuts(cuts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every cut scores: no warning
        scored = score_cuts(cutset, model="distillmos", batch_size=4)
    assert [c.id for c in scored] == [c.id for c in cuts]
    got = [c.custom["distillmos"] for c in scored]
    assert np.allclose(got, ref, atol=TOL, rtol=0), (got, ref)
    assert all(c.custom is None for c in cutset)  # the input cuts are left as they were
    # the score survives a manifest round trip
    again = lhotse.CutSet.from_dicts(scored.to_dicts())
    assert [c.custom["distillmos"] for c in again] == got


def test_failed_cuts_keep_their_reason_and_nothing_is_dropped(recordings, tmp_path):
    rec, samples, fs = recordings["rec0"]
    gone = tmp_path / "gone.wav"
    sf.write(gone, samples.numpy(), fs)
    lost = lhotse.Recording.from_file(gone, recording_id="gone")
    gone.unlink()
    cuts = lhotse.CutSet.from_cuts([
        lhotse.MonoCut(id="ok", start=0.5, duration=1.0, channel=0, recording=rec),
        lhotse.MonoCut(id="tiny", start=0.0, duration=0.05, channel=0, recording=rec),
        lhotse.MonoCut(id="lost", start=0.0, duration=1.0, channel=0, recording=lost),
    ])
    with pytest.warns(RuntimeWarning, match="2 cut"):
        scored = score_cuts(cuts, column="mos")
    by_id = {c.id: c for c in scored}
    assert list(by_id) == ["ok", "tiny", "lost"]
    want = float(F.distillmos(samples[8000:24000], fs=fs)[0])
    assert abs(by_id["ok"].custom["mos"] - want) <= TOL
    for cid in ("tiny", "lost"):
        custom = by_id[cid].custom
        assert "mos" not in custom and cid in custom["mos_error"], custom


def test_padded_and_resampled_cuts(recordings):
    rec, samples, fs = recordings["rec1"]  # 22.05 kHz
    cut = lhotse.MonoCut(id="c", start=1.0, duration=1.0, channel=0, recording=rec)
    mixed = cut.pad(duration=1.5)  # a MixedCut: the cut plus silence
    at16 = cut.resample(16000)
    scored = list(score_cuts(lhotse.CutSet.from_cuts([mixed, at16]), batch_size=2))
    padded = np.concatenate([samples[fs : 2 * fs].numpy(), np.zeros(int(0.5 * fs), np.float32)])
    assert abs(scored[0].distillmos - float(F.distillmos(padded, fs=fs)[0])) <= TOL
    assert abs(scored[1].custom["distillmos"] - float(F.distillmos(at16.load_audio()[0], fs=16000)[0])) <= TOL


def test_a_lazy_manifest_written_as_scored_and_resumed(recordings, tmp_path):
    cuts, ref = span_cuts(recordings)
    src = tmp_path / "cuts.jsonl.gz"
    lhotse.CutSet.from_cuts(cuts).to_file(src)
    lazy = lhotse.CutSet.from_jsonl_lazy(src)
    out = tmp_path / "scored.jsonl.gz"
    first = score_cuts(lhotse.CutSet.from_cuts(cuts[:4]), output=out)  # a run stopped after 4 cuts
    assert len(list(first)) == 4
    scored = score_cuts(lazy, output=out, overwrite=False, batch_size=3)  # resumed: the rest only
    assert scored.is_lazy
    ids = [c.id for c in scored]
    assert sorted(ids) == sorted(c.id for c in cuts) and len(ids) == len(set(ids))
    got = {c.id: c.custom["distillmos"] for c in scored}
    assert np.allclose([got[c.id] for c in cuts], ref, atol=TOL, rtol=0)


def test_configuration_errors():
    with pytest.raises(KeyError, match="unknown model"):
        score_cuts(lhotse.CutSet.from_cuts([]), model="not-a-model")
    with pytest.raises(ValueError, match="reference"):
        score_cuts(lhotse.CutSet.from_cuts([]), model="scoreq-ref-natural")
    with pytest.raises(ValueError, match="batch_size"):
        score_cuts(lhotse.CutSet.from_cuts([]), batch_size=0)
