"""VERSA-style functions: the same scores as torchmos.functional (no VERSA install needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmos.functional as F
from torchmos import synth
from torchmos.adapters.versa import torchmos_metric, torchmos_setup

TOL = 1e-4


def test_setup_and_metric_follow_versa_conventions():
    handle = torchmos_setup("distillmos", use_gpu=False)
    x = synth.speech_like(1.0, fs=8000, seed=3).numpy().astype(np.float64)
    out = torchmos_metric(handle, x, 8000)
    assert list(out) == ["distillmos"]
    assert out["distillmos"] == pytest.approx(float(F.distillmos(torch.from_numpy(x).float(), fs=8000)), abs=TOL)
    # (time, channel) input is averaged; integer PCM is scaled; the key can be renamed
    pcm = np.round(x * 32767).astype(np.int16)
    stereo = np.stack([pcm, pcm], axis=1)
    got = torchmos_metric(handle, stereo, 8000, key="torchmos_dmos")
    assert got["torchmos_dmos"] == pytest.approx(float(F.distillmos(torch.from_numpy(pcm), fs=8000)), abs=TOL)
    with pytest.raises(ValueError, match="no-reference"):
        handle([torch.from_numpy(x)], 8000, refs=[torch.from_numpy(x)])
