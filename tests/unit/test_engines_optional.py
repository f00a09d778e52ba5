"""The corpus engines (Ray Data, Hugging Face datasets, Lhotse) stay optional, and what they
share scores as torchmos.functional does, with an error per bad row.

The import checks run in a fresh interpreter where the toolkits are absent (imports of
them fail and are recorded, as in test_adapters_light); the rest needs no toolkit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchmos.functional as F
from tests.unit.test_adapters_light import run
from torchmos import audio, synth
from torchmos.adapters import _engines

ENGINES = {"ray": "ray", "datasets": "datasets", "lhotse": "lhotse"}  # adapter -> extra
BLOCKED = ["ray", "datasets", "lhotse", "pyarrow", "pandas"]


def test_import_torchmos_imports_no_engine_and_each_adapter_names_its_extra():
    code = r'''
import json
import torchmos, torchmos.adapters, torchmos.functional, torchmos.adapters._engines
ours = os.path.dirname(torchmos.__file__)
before = [a for a in ATTEMPTS if a[2].startswith(ours)]
errors = {}
for name in ("ray", "datasets", "lhotse"):
    try:
        __import__(f"torchmos.adapters.{name}")
        errors[name] = None
    except ImportError as e:
        errors[name] = str(e)
loaded = sorted(m for m in ("ray", "datasets", "lhotse", "pyarrow", "pandas") if m in sys.modules)
print(json.dumps({"before": before, "errors": errors, "loaded": loaded}))
'''
    out = run(code, blocked=BLOCKED)
    assert out["before"] == [], f"import torchmos tried to import {out['before']}"
    assert out["loaded"] == []
    for name, extra in ENGINES.items():
        err = out["errors"][name]
        assert err is not None and f"torchmos.adapters.{name} needs" in err, (name, err)
        assert f".[{extra}]" in err, (name, err)  # names the extra to install


def test_rank_to_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _engines.default_device(3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [_engines.default_device(r) for r in (None, 0, 1, 2, 5)] == [
        torch.device("cuda", i) for i in (0, 0, 1, 0, 1)]


@pytest.fixture(scope="module")
def engine() -> _engines.EngineScorer:
    return _engines.EngineScorer("distillmos", device="cpu")


def test_rows_at_mixed_rates_score_like_functional_and_bad_rows_are_isolated(engine):
    clips = [synth.speech_like(1.0, 16000, seed=1), synth.speech_like(0.8, 8000, seed=2),
             synth.speech_like(1.1, 16000, seed=3)]
    rows = [_engines.Clip(clips[0], 16000), _engines.Clip(clips[1], 8000),
            _engines.Clip(torch.zeros(160), 16000),  # too short: the batch at 16 kHz fails, then row by row
            audio.AudioError("x.wav: cannot be read"), _engines.Clip(clips[2], 16000)]
    labels = ["a.wav", "b.wav", "short.wav", "x.wav", "c.wav"]
    scores, errors = engine.score(rows, labels)
    want = [float(F.distillmos(c, fs=fs)[0]) for c, fs in zip(clips, (16000, 8000, 16000))]
    got = [scores[0], scores[1], scores[4]]
    assert np.allclose(got, want, atol=1e-5, rtol=0), (got, want)
    assert errors[0] is None and errors[1] is None and errors[4] is None
    assert scores[2] is None and errors[2].startswith("short.wav: ") and "preds[" not in errors[2], errors[2]
    assert scores[3] is None and errors[3] == "x.wav: cannot be read"


def test_channels_first_arrays_are_averaged_and_the_other_layout_refused():
    x = np.stack([np.ones(400, np.float32), np.zeros(400, np.float32)])
    assert torch.equal(_engines.mono(x, "row 0"), torch.full((400,), 0.5))
    with pytest.raises(audio.AudioError, match=r"row 1: .*\(channels, samples\)"):
        _engines.mono(x.T, "row 1")
    with pytest.raises(audio.AudioError, match="row 3: .*list of int64"):  # PCM width lost in a list
        _engines.mono([[1000, -1000, 3]], "row 3")
    assert torch.equal(_engines.mono([0.25, -0.5], "row 4"), torch.tensor([0.25, -0.5]))
    got = _engines.clip_from_array((x * 32767).astype(np.int16), 8000.0, "row 2")
    assert got.rate == 8000 and math.isclose(float(got.samples[0]), 0.5 * 32767 / 32768, rel_tol=1e-6)


def test_reference_models_and_unknown_names_are_refused_at_once():
    with pytest.raises(ValueError, match="reference"):
        _engines.check_model("scoreq-ref-natural")
    with pytest.raises(KeyError, match="unknown model"):
        _engines.EngineScorer("not-a-model")
