"""transformers: TorchmosForAudioQuality (safetensors) and pipeline("audio-quality"), offline."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers", minversion="5", reason="needs transformers 5.x: pip install -e '.[integrations]'")

import torchmos.functional as F  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters.hf import (  # noqa: E402
    AudioQualityPipeline,
    TorchmosConfig,
    TorchmosFeatureExtractor,
    TorchmosForAudioQuality,
)

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def hf_offline():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "distillmos-hf"
    TorchmosForAudioQuality.from_torchmos("distillmos").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pipe(model_dir):
    from transformers import pipeline

    return pipeline("audio-quality", model=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def x16() -> np.ndarray:
    return synth.speech_like(1.5, fs=16000, seed=1).numpy()


@pytest.fixture(scope="module")
def x8() -> np.ndarray:
    return synth.degrade(synth.speech_like(1.25, fs=8000, seed=2), 8000, "noise_5dB").numpy()


def test_saved_directory_is_hub_ready(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json", "torchmos_hf.py"]
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "torchmos" and cfg["mos_model"] == "distillmos"
    assert cfg["architectures"] == ["TorchmosForAudioQuality"]
    assert cfg["auto_map"]["AutoModel"] == "torchmos_hf.TorchmosForAudioQuality"
    assert cfg["custom_pipelines"]["audio-quality"]["impl"] == "torchmos_hf.AudioQualityPipeline"
    fe = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert fe["feature_extractor_type"] == "TorchmosFeatureExtractor" and fe["sampling_rate"] == 16000
    from safetensors.torch import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    assert len(weights) > 50 and all(k.startswith("net.") for k in weights)


def test_round_trip_uses_the_saved_weights(tmp_path, x16):
    model = TorchmosForAudioQuality.from_torchmos("distillmos")
    with torch.no_grad():
        model.net.transformer_pool_attn.pool.linear3.bias.add_(0.5)  # a "fine-tuned" model
    model.save_pretrained(tmp_path / "tuned")
    loaded = TorchmosForAudioQuality.from_pretrained(tmp_path / "tuned")
    assert torch.equal(loaded.net.transformer_pool_attn.pool.linear3.bias,
                       model.net.transformer_pool_attn.pool.linear3.bias)
    for (k, a), b in zip(model.net.state_dict().items(), loaded.net.state_dict().values()):
        assert torch.equal(a, b), k
    # non-persistent buffers (e.g. the STFT window) are rebuilt, not left uninitialised
    for (k, a), (_, b) in zip(model.net.named_buffers(), loaded.net.named_buffers()):
        assert torch.equal(a, b), k
    x = torch.from_numpy(x16)[None]
    assert torch.allclose(loaded(x).scores, model(x).scores, atol=TOL)
    assert not torch.allclose(loaded(x).scores, F.distillmos(x), atol=TOL)  # the tuned weights are used


def test_auto_classes_and_forward_with_padding(model_dir, x16):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    assert isinstance(AutoConfig.from_pretrained(model_dir), TorchmosConfig)
    model = AutoModel.from_pretrained(model_dir)
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    assert isinstance(model, TorchmosForAudioQuality) and isinstance(fe, TorchmosFeatureExtractor)
    clips = [x16, x16[:9000]]
    batch = fe(clips, sampling_rate=16000, return_tensors="pt")
    assert batch["input_values"].shape == (2, len(x16)) and int(batch["attention_mask"][1].sum()) == 9000
    with torch.no_grad():
        scores = model(**batch).scores
    want = F.distillmos([torch.from_numpy(c) for c in clips])
    assert torch.allclose(scores, want, atol=TOL)
    with pytest.raises(ValueError, match="resample"):
        fe(x16, sampling_rate=8000)


def test_pipeline_inputs_equal_functional(pipe, tmp_path, x16, x8):
    assert isinstance(pipe, AudioQualityPipeline)
    ref16 = float(F.distillmos(torch.from_numpy(x16)))
    ref8 = float(F.distillmos(torch.from_numpy(x8), fs=8000))

    # a path (FLOAT wav keeps the samples exactly) and the raw bytes of an 8 kHz flac
    sf.write(tmp_path / "a.wav", x16, 16000, subtype="FLOAT")
    out = pipe(str(tmp_path / "a.wav"))
    assert out == {"score": pytest.approx(ref16, abs=TOL), "model": "distillmos"}
    buf = io.BytesIO()
    sf.write(buf, x8, 8000, format="FLAC")
    sf.write(tmp_path / "b.flac", x8, 8000)  # the same 16-bit encoding, read through torchmos.audio
    want_flac = float(F.distillmos(audio.read(tmp_path / "b.flac")[0], fs=8000))
    assert pipe(buf.getvalue())["score"] == pytest.approx(want_flac, abs=TOL)

    # arrays and tensors at the model's rate; dicts at any rate are resampled
    assert pipe(x16)["score"] == pytest.approx(ref16, abs=TOL)
    assert pipe(torch.from_numpy(x16))["score"] == pytest.approx(ref16, abs=TOL)
    assert pipe({"array": x8, "sampling_rate": 8000})["score"] == pytest.approx(ref8, abs=TOL)
    assert pipe({"raw": torch.from_numpy(x8), "sampling_rate": 8000})["score"] == pytest.approx(ref8, abs=TOL)
    assert pipe({"raw": x16, "sampling_rate": 16000, "path": "ignored"})["score"] == pytest.approx(ref16, abs=TOL)


def test_pipeline_batches_lists(pipe, x16, x8):
    short = x16[:6000]
    inputs = [x16, {"array": x8, "sampling_rate": 8000}, short]
    want = [float(F.distillmos(torch.from_numpy(x16))), float(F.distillmos(torch.from_numpy(x8), fs=8000)),
            float(F.distillmos(torch.from_numpy(short)))]
    for batch_size in (1, 3):
        out = pipe(inputs, batch_size=batch_size)
        assert [o["model"] for o in out] == ["distillmos"] * 3
        assert [o["score"] for o in out] == pytest.approx(want, abs=TOL)


def test_pipeline_errors_are_actionable(pipe, x16):
    with pytest.raises(ValueError, match="sampling_rate"):
        pipe({"array": x16})
    with pytest.raises(ValueError, match="mono"):
        pipe(np.stack([x16, x16]))
    with pytest.raises(ValueError, match="download"):
        pipe("https://example.org/a.wav")
    with pytest.raises(audio.AudioError, match="no such file"):
        pipe("/nonexistent/a.wav")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=OFFLINE)


def test_import_torchmos_registers_the_task_without_importing_transformers(model_dir, tmp_path):
    code = f"""
import sys
import torchmos
assert "transformers.pipelines" not in sys.modules, "import torchmos imported transformers.pipelines"
assert "torchmos.adapters.hf" not in sys.modules
from transformers import pipeline
pipe = pipeline("audio-quality", model={str(model_dir)!r})
import torch
print(type(pipe).__name__, pipe(torch.zeros(16000) + 0.01 * torch.randn(16000))["model"])
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["AudioQualityPipeline", "distillmos"]


def test_registered_when_transformers_pipelines_came_first(model_dir, tmp_path):
    code = f"""
from transformers import pipeline
import torchmos
print(type(pipeline("audio-quality", model={str(model_dir)!r})).__name__)
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["AudioQualityPipeline"]


def test_trust_remote_code_loads_without_importing_torchmos(model_dir, tmp_path, x16):
    """What a Hub user gets: config.json's auto_map/custom_pipelines -> torchmos_hf.py."""
    np.save(tmp_path / "x.npy", x16)
    code = f"""
import sys
import numpy as np
from transformers import pipeline
pipe = pipeline(model={str(model_dir)!r}, task="audio-quality", trust_remote_code=True)
print(type(pipe).__name__, repr(pipe(np.load("x.npy"))["score"]))
"""
    env_home = tmp_path / "hf-home"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**OFFLINE, "HF_HOME": str(env_home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, score = proc.stdout.split()
    assert name == "AudioQualityPipeline"
    assert float(score) == pytest.approx(float(F.distillmos(torch.from_numpy(x16))), abs=TOL)


def test_example_script(tmp_path):
    script = ROOT / "integrations" / "transformers" / "score_with_pipeline.py"
    proc = subprocess.run([sys.executable, str(script), "--model-dir", str(tmp_path / "m")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [r["input"] for r in rows] == ["path", "bytes", "array@16k", "dict@8k"]
    assert all(r["model"] == "distillmos" and 1.0 <= r["score"] <= 5.0 for r in rows)
    assert rows[0]["score"] == pytest.approx(rows[2]["score"], abs=TOL)  # FLOAT wav == the array
