"""transformers, offline: TorchmosForAudioQuality (safetensors), pipeline("audio-quality") and,
natively, pipeline("audio-classification") (a regression head), the task inferred with no
task given, dtype=torch.bfloat16, and torchcodec AudioDecoder inputs."""

from __future__ import annotations

import doctest
import importlib
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers", minversion="5", reason="needs transformers 5.x (a torchmos dependency)")

import torchmos.functional as F  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters.hf import (  # noqa: E402
    AudioQualityOutput,
    AudioQualityPipeline,
    TorchmosConfig,
    TorchmosFeatureExtractor,
    TorchmosForAudioQuality,
)
from torchmos.models.distillmos import bf16_supported_on  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4
# transformers 5.23+ applies no function to a regression head's logits; 5.4-5.22 apply a softmax
# unless each call passes function_to_apply="none" (docs/integrations/transformers.md)
PLAIN = {} if tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (5, 23) else {
    "function_to_apply": "none"}
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
    assert cfg["auto_map"]["AutoModelForAudioClassification"] == "torchmos_hf.TorchmosForAudioQuality"
    assert (cfg["problem_type"], cfg["id2label"], cfg["label2id"]) == ("regression", {"0": "distillmos"},
                                                                       {"distillmos": 0})
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
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(model_dir)
    assert isinstance(config, TorchmosConfig)
    assert (config.problem_type, config.num_labels, config.id2label) == ("regression", 1, {0: "distillmos"})
    model = tf.AutoModel.from_pretrained(model_dir)
    fe = tf.AutoFeatureExtractor.from_pretrained(model_dir)
    assert isinstance(model, TorchmosForAudioQuality) and isinstance(fe, TorchmosFeatureExtractor)
    assert type(tf.AutoModelForAudioClassification.from_pretrained(model_dir)) is TorchmosForAudioQuality
    clips = [x16, x16[:9000]]
    batch = fe(clips, sampling_rate=16000, return_tensors="pt")
    assert batch["input_values"].shape == (2, len(x16)) and int(batch["attention_mask"][1].sum()) == 9000
    with torch.no_grad():
        out = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    want = F.distillmos([torch.from_numpy(c) for c in clips])
    assert isinstance(out, AudioQualityOutput) and out.logits.shape == (2, 1) and out.scores.shape == (2,)
    assert torch.allclose(out.scores, want, atol=TOL) and torch.equal(out.logits[:, 0], out.scores)
    assert torch.equal(as_tuple[0], out.scores) and torch.equal(as_tuple[1], out.logits)
    with pytest.raises(ValueError, match="no loss"):
        model(**batch, labels=torch.tensor([3.0, 4.0]))
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


@pytest.mark.parametrize("name", ["hf_config", "hf_features"])
def test_docstring_examples(name):
    module = importlib.import_module(f"torchmos.adapters.{name}")
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0 and res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"


# ----------------------------------------------------------------------------- audio-classification, natively


@pytest.fixture(scope="module")
def classifier(model_dir):
    from transformers import AudioClassificationPipeline, pipeline

    pipe = pipeline("audio-classification", model=str(model_dir), device="cpu")
    assert type(pipe) is AudioClassificationPipeline  # transformers' own pipeline, not a torchmos one
    return pipe


def test_audio_classification_pipeline_returns_the_score(classifier, x16, x8):
    ref16 = float(F.distillmos(torch.from_numpy(x16)))
    ref8 = float(F.distillmos(torch.from_numpy(x8), fs=8000))
    assert classifier(x16, **PLAIN) == [{"score": pytest.approx(ref16, abs=TOL), "label": "distillmos"}]
    assert classifier(torch.from_numpy(x16), **PLAIN)[0]["score"] == pytest.approx(ref16, abs=TOL)
    # dicts are resampled by transformers (torchaudio's resampler), as torchmos does
    assert classifier({"array": x8, "sampling_rate": 8000}, **PLAIN)[0]["score"] == pytest.approx(ref8, abs=TOL)
    # a regression head's logits are the scores: no softmax unless asked for
    assert classifier(x16, top_k=None, function_to_apply="none") == classifier(x16, **PLAIN)
    assert classifier(x16, function_to_apply="softmax") == [{"score": 1.0, "label": "distillmos"}]
    short = x16[:6000]
    out = classifier([x16, short], batch_size=2, **PLAIN)  # padded together; padding is never scored
    want = [ref16, float(F.distillmos(torch.from_numpy(short)))]
    assert [o[0]["score"] for o in out] == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("task", ["audio-quality", "audio-classification"])
def test_dtype_bfloat16_runs_the_torchmos_bf16_mode(model_dir, x16, task):
    from transformers import pipeline

    pipe = pipeline(task, model=str(model_dir), device="cpu", dtype=torch.bfloat16)
    assert pipe.model.precision == "bf16" and pipe.model.config.model_options == {"precision": "bf16"}
    assert pipe.model.dtype == torch.float32  # audio in and scores out stay float32
    out = pipe(x16) if task == "audio-quality" else pipe(x16, **PLAIN)
    got = out["score"] if task == "audio-quality" else out[0]["score"]
    x = torch.from_numpy(x16)
    assert got == pytest.approx(float(F.distillmos(x, precision="bf16")), abs=TOL)
    fp32 = float(F.distillmos(x))
    assert abs(got - fp32) <= 0.02  # the error budget of docs/performance.md
    if bf16_supported_on("cpu"):
        assert got != fp32  # bf16 did run (on a CPU without bf16, torchmos warns and runs fp32)


def test_other_dtypes_are_refused_and_the_pipeline_falls_back_to_float32(model_dir, tmp_path, x16):
    from transformers import pipeline

    with pytest.raises(ValueError, match="float16"):
        TorchmosForAudioQuality.from_pretrained(model_dir, dtype=torch.float16)
    pipe = pipeline("audio-classification", model=str(model_dir), dtype=torch.float16)  # transformers retries fp32
    assert pipe.model.precision == "fp32"
    assert pipe(x16, **PLAIN)[0]["score"] == pytest.approx(float(F.distillmos(torch.from_numpy(x16))), abs=TOL)
    # a model saved in bf16 mode reloads in it; dtype=torch.float32 asks for the exact mode
    TorchmosForAudioQuality.from_torchmos("distillmos", precision="bf16").save_pretrained(tmp_path / "bf")
    assert TorchmosForAudioQuality.from_pretrained(tmp_path / "bf").precision == "bf16"
    exact = TorchmosForAudioQuality.from_pretrained(tmp_path / "bf", dtype=torch.float32)
    assert exact.precision == "fp32" and exact.config.model_options == {"precision": "fp32"}
    with torch.no_grad():
        assert torch.allclose(exact(torch.from_numpy(x16)).scores, F.distillmos(torch.from_numpy(x16)), atol=TOL)


# ----------------------------------------------------------------------------- torchcodec AudioDecoder


def torchcodec_decodes(folder: Path) -> bool:
    """Whether torchcodec is installed and can load its FFmpeg libraries here."""
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        return False
    sf.write(folder / "probe.wav", np.zeros(1600, np.float32), 16000)
    try:
        AudioDecoder(str(folder / "probe.wav"))
    except RuntimeError:
        return False
    return True


def fake_torchcodec(monkeypatch: pytest.MonkeyPatch) -> type:
    """An ``AudioDecoder`` with torchcodec's interface (``get_all_samples()`` -> ``data``
    (channels, samples), ``sample_rate``), in a ``torchcodec`` module in ``sys.modules``."""

    class AudioDecoder:
        def __init__(self, data: np.ndarray, sample_rate: int) -> None:
            self._samples = types.SimpleNamespace(data=torch.as_tensor(data), sample_rate=sample_rate)

        def get_all_samples(self) -> types.SimpleNamespace:
            return self._samples

    module = types.ModuleType("torchcodec")
    module.decoders = types.SimpleNamespace(AudioDecoder=AudioDecoder)
    monkeypatch.setitem(sys.modules, "torchcodec", module)
    return AudioDecoder


def test_audio_quality_pipeline_takes_audio_decoders(pipe, x16, x8, monkeypatch):
    AudioDecoder = fake_torchcodec(monkeypatch)
    ref8 = float(F.distillmos(torch.from_numpy(x8), fs=8000))
    assert pipe(AudioDecoder(x8[None], 8000))["score"] == pytest.approx(ref8, abs=TOL)
    out = pipe([AudioDecoder(x16[None], 16000), AudioDecoder(x8[None], 8000)], batch_size=2)
    assert [o["score"] for o in out] == pytest.approx([float(F.distillmos(torch.from_numpy(x16))), ref8], abs=TOL)
    with pytest.raises(ValueError, match="num_channels=1"):
        pipe(AudioDecoder(np.stack([x16, x16]), 16000))


@pytest.mark.xfail(strict=True, raises=(TypeError, ValueError), reason=(
    "transformers 5.x's AudioClassificationPipeline (5.4 to 5.24) keeps the channel axis of AudioSamples.data (C, N) and then "
    "refuses it (TypeError at the model's rate, ValueError otherwise), for every model; docs/integrations/"
    "transformers.md says so. When this passes, transformers has fixed it: update the page."))
@pytest.mark.parametrize("rate", [16000, 8000])
def test_audio_classification_pipeline_and_audio_decoders(classifier, x16, rate, monkeypatch):
    AudioDecoder = fake_torchcodec(monkeypatch)
    x = x16 if rate == 16000 else synth.speech_like(1.0, fs=8000, seed=3).numpy()
    assert classifier(AudioDecoder(x[None], rate))[0]["score"] == pytest.approx(
        float(F.distillmos(torch.from_numpy(x), fs=rate)), abs=TOL)


def test_a_real_torchcodec_decoder(pipe, tmp_path, x8):
    if not torchcodec_decodes(tmp_path):
        pytest.skip("torchcodec is not installed, or finds no FFmpeg libraries it can load")
    from torchcodec.decoders import AudioDecoder

    sf.write(tmp_path / "c.wav", x8, 8000, subtype="FLOAT")
    decoder = AudioDecoder(str(tmp_path / "c.wav"))
    assert pipe(decoder)["score"] == pytest.approx(float(F.distillmos(torch.from_numpy(x8), fs=8000)), abs=TOL)


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


def test_offline_the_task_is_inferred_and_audio_classification_loads(model_dir, tmp_path, x16):
    """In a fresh process with HF_HUB_OFFLINE=1 (read by huggingface_hub when it is imported)."""
    np.save(tmp_path / "x.npy", x16)
    code = f"""
import json
import numpy as np
import torchmos
from transformers import pipeline
x = np.load("x.npy")
auto = pipeline(model={str(model_dir)!r})  # no task: inferred from config.json
native = pipeline("audio-classification", model={str(model_dir)!r})
try:  # transformers infers a task offline only from config.custom_pipelines, not with remote code refused
    pipeline(model={str(model_dir)!r}, trust_remote_code=False)
    refused = ""
except RuntimeError as e:
    refused = str(e)
print(json.dumps([type(auto).__name__, auto.task, auto(x)["score"], type(native).__name__, native(x, **{PLAIN!r}),
                  refused]))
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, task, score, native_name, native, refused = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = float(F.distillmos(torch.from_numpy(x16)))
    assert (name, task, native_name) == ("AudioQualityPipeline", "audio-quality", "AudioClassificationPipeline")
    assert score == pytest.approx(ref, abs=TOL)
    assert native == [{"score": pytest.approx(ref, abs=TOL), "label": "distillmos"}]
    assert "offline mode" in refused


def test_trust_remote_code_loads_without_importing_torchmos(model_dir, tmp_path, x16):
    """What a Hub user gets: config.json's auto_map/custom_pipelines -> torchmos_hf.py."""
    np.save(tmp_path / "x.npy", x16)
    code = f"""
import sys
import numpy as np
from transformers import pipeline
pipe = pipeline(model={str(model_dir)!r}, task="audio-quality", trust_remote_code=True)
auto = pipeline(model={str(model_dir)!r}, trust_remote_code=True)  # the task inferred, as with torchmos imported
print(type(pipe).__name__, repr(pipe(np.load("x.npy"))["score"]), type(auto).__name__)
"""
    env_home = tmp_path / "hf-home"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**OFFLINE, "HF_HOME": str(env_home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, score, auto = proc.stdout.split()
    assert name == auto == "AudioQualityPipeline"
    assert float(score) == pytest.approx(float(F.distillmos(torch.from_numpy(x16))), abs=TOL)


@pytest.mark.parametrize("task", ["audio-quality", "audio-classification"])
def test_example_script(tmp_path, task):
    script = ROOT / "integrations" / "transformers" / "score_with_pipeline.py"
    proc = subprocess.run([sys.executable, str(script), "--task", task, "--model-dir", str(tmp_path / "m")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    key, value = ("model", "distillmos") if task == "audio-quality" else ("label", "distillmos")
    assert all(r[key] == value and 1.0 <= r["score"] <= 5.0 for r in rows)
    by_input = {r["input"]: r["score"] for r in rows}
    if task == "audio-quality":
        assert list(by_input)[:4] == ["path", "bytes", "array@16k", "dict@8k"]
        assert by_input["path"] == pytest.approx(by_input["array@16k"], abs=TOL)  # FLOAT wav == the array
    else:
        assert list(by_input) == ["array@16k", "dict@8k"]
    want = float(F.distillmos(synth.speech_like(1.5, fs=16000, seed=1)))  # the script's array@16k
    assert by_input["array@16k"] == pytest.approx(want, abs=TOL)
    if task == "audio-quality" and torchcodec_decodes(tmp_path):  # then the demo adds a decoder of the wav
        assert by_input["AudioDecoder"] == pytest.approx(by_input["path"], abs=TOL)
    else:
        assert "AudioDecoder" not in by_input
