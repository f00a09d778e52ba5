"""A saved ``TorchmosForAudioQuality`` directory reloads from itself alone.

Every family is wrapped (``from_torchmos(..., checkpoint=...)`` on a small random model
the test writes, or DistillMOS's official weights, tuned), saved with ``save_pretrained``,
then reloaded in a fresh interpreter that is offline (``TORCHMOS_OFFLINE``,
``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``), has an empty ``TORCHMOS_HOME`` and whose
``torchmos.hub.resolve`` raises: the network must come from ``config.json`` and the
weights from ``model.safetensors``, nothing else. Scores through ``from_pretrained`` and
through ``pipeline("audio-quality", model=dir)`` and (for a fixed-rate model) transformers'
own ``pipeline("audio-classification", model=dir)`` must equal the original model's.
``dtype=torch.bfloat16`` must give torchmos' own bf16 mode, or be refused where there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.helpers import speechlike  # noqa: E402
from torchmos.adapters.hf import TorchmosForAudioQuality  # noqa: E402
from torchmos.models.msr_utmos import MsrUtmosModel, SFISSLModel, tiny_config  # noqa: E402
from torchmos.models.scoreq import ScoreqModel  # noqa: E402
from torchmos.models.vqscore import VQScoreModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-6
ROOT = Path(__file__).resolve().parents[2]

# Runs in the fresh interpreter: argv = directory, clips.npz, "pipeline" or "ref".
RELOAD = r"""
import json, sys
import numpy as np
import torch
import torchmos.hub as hub

torch.set_num_threads(1)

def refuse(*args, **kwargs):
    raise AssertionError(f"torchmos.hub.resolve{args} was called: the reload looked for a weight file")

hub.resolve = refuse
from transformers import pipeline
from torchmos.adapters.hf import TorchmosForAudioQuality

d, data, how = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
clips = [data[f"clip{i}"] for i in range(len(data["rates"]))]
rates = [int(r) for r in data["rates"]]
model = TorchmosForAudioQuality.from_pretrained(d)
out = {}
with torch.no_grad():
    if how == "ref":
        refs = [torch.from_numpy(data[f"ref{i}"])[None] for i in range(len(clips))]
        out["direct"] = [float(model(torch.from_numpy(c)[None], reference_values=r).scores)
                         for c, r in zip(clips, refs)]
    else:
        out["direct"] = [float(model(torch.from_numpy(c)[None], sampling_rate=fs).scores)
                         for c, fs in zip(clips, rates)]
if how == "pipeline":
    pipe = pipeline("audio-quality", model=d, device="cpu")
    inputs = [{"array": c, "sampling_rate": fs} for c, fs in zip(clips, rates)]
    out["pipeline"] = [o["score"] for o in pipe(inputs, batch_size=len(inputs))]
    out["one_by_one"] = [pipe(x)["score"] for x in inputs]
    if model.config.sampling_rate:  # transformers' own pipeline resamples to one rate: not for MSR-UTMOS
        import transformers
        from packaging.version import Version

        # transformers 5.23+ applies no function to a regression head's logits; 5.4-5.22 a softmax
        # unless each call says otherwise
        plain = {} if Version(transformers.__version__) >= Version("5.23") else {"function_to_apply": "none"}
        native = pipeline("audio-classification", model=d, device="cpu")
        out["audio-classification"] = [o[0]["score"] for o in native(inputs, batch_size=len(inputs), **plain)]
print("RESULT " + json.dumps(out))
"""


def reload_offline(directory: Path, clips: list[np.ndarray], rates: list[int], tmp: Path,
                   how: str = "pipeline", refs: list[np.ndarray] | None = None) -> dict[str, list[float]]:
    """Scores of ``directory`` reloaded in a fresh, offline interpreter with an empty cache."""
    home = tmp / "empty-torchmos-home"
    home.mkdir(exist_ok=True)
    arrays = {f"clip{i}": c for i, c in enumerate(clips)}
    arrays.update({f"ref{i}": r for i, r in enumerate(refs or [])})
    np.savez(tmp / "clips.npz", rates=np.array(rates), **arrays)
    env = {**os.environ, "TORCHMOS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TORCHMOS_HOME": str(home), "HF_HOME": str(tmp / "hf-home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(directory), str(tmp / "clips.npz"), how],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert list(home.iterdir()) == [], "the reload wrote into the torchmos cache"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def assert_scores(got: dict[str, list[float]], want: list[float]) -> None:
    for how, scores in got.items():
        assert scores == pytest.approx(want, abs=TOL), how


def architecture(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())["architecture"]


def perturb(net: torch.nn.Module, seed: int) -> None:
    """Make every bias and norm non-trivial, like a trained model's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))


def clips16() -> list[np.ndarray]:
    noise = 0.05 * torch.randn(12000, generator=torch.Generator().manual_seed(2))
    return [speechlike(1.0, 16000, seed=1).numpy(), noise.numpy()]


# ----------------------------------------------------------------------------- SCOREQ


# a resized SCOREQ: 2 layers, hidden 128 (2 heads, as infer_config reads it), 32-channel convs
SCOREQ_SMALL = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=96,
                    num_conv_pos_embedding_groups=4, num_conv_pos_embeddings=16, conv_dim=(32,) * 7)


def scoreq_wrapped(mode: str, tmp_path: Path) -> tuple[ScoreqModel, TorchmosForAudioQuality]:
    torch.manual_seed(3)
    net = ScoreqModel(mode, **SCOREQ_SMALL)
    perturb(net, 3)
    if mode == "nr":
        with torch.no_grad():
            net.mos_layer.weight.normal_()
            net.mos_layer.bias.fill_(3.0)
    torch.save(net.to_official_state_dict(), tmp_path / f"{mode}.pt")  # the official file layout
    wrapped = TorchmosForAudioQuality.from_torchmos(f"scoreq-{mode}-natural", checkpoint=tmp_path / f"{mode}.pt")
    return net, wrapped


def test_resized_scoreq_nr_reloads_offline_from_its_directory(tmp_path):
    net, model = scoreq_wrapped("nr", tmp_path)
    model.save_pretrained(tmp_path / "dir")
    arch = architecture(tmp_path / "dir")
    assert arch["family"] == "scoreq" and arch["version"] == 1 and arch["config"]["mode"] == "nr"
    enc = arch["config"]["encoder"]
    assert (enc["num_hidden_layers"], enc["hidden_size"], enc["num_attention_heads"], enc["conv_dim"]) == (
        2, 128, 2, [32] * 7)
    clips = clips16()
    want = [float(net([torch.from_numpy(c)])) for c in clips]
    assert_scores(reload_offline(tmp_path / "dir", clips, [16000, 16000], tmp_path), want)


def test_scoreq_dtype_bfloat16_is_torchmos_bf16_mode(tmp_path):
    from torchmos import models

    _, model = scoreq_wrapped("nr", tmp_path)
    model.save_pretrained(tmp_path / "dir")
    bf16 = TorchmosForAudioQuality.from_pretrained(tmp_path / "dir", dtype=torch.bfloat16)
    own = models.load("scoreq-nr-natural", checkpoint=tmp_path / "nr.pt", precision="bf16")
    assert bf16.precision == "bf16" and bf16.dtype == torch.float32
    assert {k: p.dtype for k, p in bf16.net.named_parameters()} == {k: p.dtype for k, p in own.named_parameters()}
    assert torch.bfloat16 in {p.dtype for p in bf16.net.parameters()}  # conv/linear weights stored in bf16
    x = [torch.from_numpy(c) for c in clips16()]
    with torch.no_grad():
        got = torch.cat([bf16(c[None]).scores for c in x])
        fp32 = torch.cat([model(c[None]).scores for c in x])
    assert got.tolist() == pytest.approx([float(own([c])) for c in x], abs=TOL)
    assert not torch.equal(got, fp32)
    # saved in that mode, it reloads in it; dtype=torch.float32 asks for the exact mode
    bf16.save_pretrained(tmp_path / "bf16")
    again = TorchmosForAudioQuality.from_pretrained(tmp_path / "bf16")
    assert again.precision == "bf16"
    with torch.no_grad():
        assert torch.cat([again(c[None]).scores for c in x]).tolist() == pytest.approx(got.tolist(), abs=TOL)
    exact = TorchmosForAudioQuality.from_pretrained(tmp_path / "bf16", dtype="float32")
    assert exact.precision == "fp32" and {p.dtype for p in exact.net.parameters()} == {torch.float32}


def test_resized_scoreq_ref_reloads_offline_from_its_directory(tmp_path):
    net, model = scoreq_wrapped("ref", tmp_path)
    model.save_pretrained(tmp_path / "dir")
    clips = clips16()
    refs = [speechlike(1.2, 16000, seed=5).numpy(), speechlike(0.8, 16000, seed=6).numpy()]
    want = [float(net.distance([torch.from_numpy(c)], [torch.from_numpy(r)])) for c, r in zip(clips, refs)]
    got = reload_offline(tmp_path / "dir", clips, [16000, 16000], tmp_path, how="ref", refs=refs)
    assert_scores(got, want)


# ----------------------------------------------------------------------------- VQScore


def test_trained_small_vqscore_reloads_offline_from_its_directory(tmp_path):
    torch.manual_seed(4)
    net = VQScoreModel(codebook_size=32, codebook_dim=8, channels=(24, 16), kmeans_iters=3)
    perturb(net, 4)
    net.train()
    net.forward_train([speechlike(1.0, 16000, seed=s) for s in range(3)])  # k-means init + one EMA step
    net.eval()
    assert net.codebook.is_initialised
    net.save(tmp_path / "vq.pt")
    model = TorchmosForAudioQuality.from_torchmos("vqscore", checkpoint=tmp_path / "vq.pt")
    model.save_pretrained(tmp_path / "dir")
    arch = architecture(tmp_path / "dir")
    assert arch["family"] == "vqscore"
    assert {k: arch["config"][k] for k in ("codebook_size", "codebook_dim", "channels")} == {
        "codebook_size": 32, "codebook_dim": 8, "channels": [24, 16]}
    clips = clips16()
    want = [float(net([torch.from_numpy(c)])) for c in clips]
    assert_scores(reload_offline(tmp_path / "dir", clips, [16000, 16000], tmp_path), want)
    with pytest.raises(ValueError, match="'vqscore' has no bf16 mode"):
        TorchmosForAudioQuality.from_pretrained(tmp_path / "dir", dtype=torch.bfloat16)
    assert TorchmosForAudioQuality.from_pretrained(tmp_path / "dir", dtype=torch.float32).precision is None


# ----------------------------------------------------------------------------- MSR-UTMOS


def msr_utmos_wrapped(tmp_path: Path) -> tuple[MsrUtmosModel, TorchmosForAudioQuality]:
    torch.manual_seed(5)
    net = MsrUtmosModel(SFISSLModel("hubert", tiny_config("hubert"), {"filter": "naf", "n_rff": 16,
                                                                     "hidden": [16, 16]})).eval()
    perturb(net, 5)
    net.save(tmp_path / "msr.pt")
    return net, TorchmosForAudioQuality.from_torchmos("msr-utmos", checkpoint=tmp_path / "msr.pt")


def test_msr_utmos_reloads_offline_from_its_directory_at_each_clips_rate(tmp_path):
    net, model = msr_utmos_wrapped(tmp_path)
    model.save_pretrained(tmp_path / "dir")
    arch = architecture(tmp_path / "dir")
    assert arch["family"] == "msr-utmos" and arch["config"]["ssl"]["arch"] == "hubert"
    assert arch["config"]["ssl"]["sfi"]["n_rff"] == 16
    clips = [speechlike(1.0, 24000, seed=7).numpy(), speechlike(0.75, 16000, seed=8).numpy()]
    rates = [24000, 16000]  # one batch of two rates: each clip is scored at its own
    want = [float(net([torch.from_numpy(c)], fs)) for c, fs in zip(clips, rates)]
    assert_scores(reload_offline(tmp_path / "dir", clips, rates, tmp_path), want)


def test_wrapping_keeps_every_weight(tmp_path):
    """``post_init`` must not re-initialise layers (MSR-UTMOS's SFI layer sits inside a
    transformers backbone, which would initialise it as its own)."""
    net, model = msr_utmos_wrapped(tmp_path)
    own = net.state_dict()
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, own[k]), k


def test_msr_utmos_needs_the_rate_of_its_audio(tmp_path):
    from transformers import pipeline

    _, model = msr_utmos_wrapped(tmp_path)
    x = speechlike(0.5, 24000, seed=9)
    with pytest.raises(ValueError, match="native rate"):
        model(x[None])
    both = model(torch.stack([x, x]), sampling_rate=torch.tensor([24000, 16000])).scores
    assert both[0] == pytest.approx(float(model(x[None], sampling_rate=24000).scores), abs=TOL)
    assert both[1] == pytest.approx(float(model(x[None], sampling_rate=16000).scores), abs=TOL)
    pipe = pipeline("audio-quality", model=model, feature_extractor=model.make_feature_extractor())
    with pytest.raises(ValueError, match="sampling_rate"):
        pipe(x.numpy())
    with pytest.raises(ValueError, match="sampling_rate"):
        model.make_feature_extractor()(x.numpy())
    native = pipeline("audio-classification", model=model, feature_extractor=model.make_feature_extractor())
    with pytest.raises(ValueError, match="audio-quality"):  # it cannot pass each clip's rate on
        native(x.numpy())


# ----------------------------------------------------------------------------- DistillMOS


def test_tuned_distillmos_reloads_offline_without_the_official_weights(tmp_path):
    model = TorchmosForAudioQuality.from_torchmos("distillmos")
    with torch.no_grad():
        model.net.transformer_pool_attn.pool.linear3.bias.add_(0.5)  # a "fine-tuned" model
    model.save_pretrained(tmp_path / "dir")
    assert architecture(tmp_path / "dir") == {"family": "distillmos", "version": 1, "config": {}}
    clips = clips16()
    want = [float(model.net([torch.from_numpy(c)])) for c in clips]
    assert_scores(reload_offline(tmp_path / "dir", clips, [16000, 16000], tmp_path), want)


def test_a_directory_saved_without_architecture_still_loads(tmp_path, tmp_home):
    """Older directories (no ``architecture``) build the card's official model first."""
    model = TorchmosForAudioQuality.from_torchmos("distillmos")
    with torch.no_grad():
        model.net.transformer_pool_attn.pool.linear3.bias.add_(0.25)
    model.save_pretrained(tmp_path / "dir")
    cfg_path = tmp_path / "dir" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["architecture"]
    cfg_path.write_text(json.dumps(cfg))
    loaded = TorchmosForAudioQuality.from_pretrained(tmp_path / "dir")
    x = torch.from_numpy(clips16()[0])[None]
    assert torch.allclose(loaded(x).scores, model(x).scores, atol=TOL)


def test_an_msr_utmos_directory_without_architecture_says_what_to_do(tmp_path):
    _, model = msr_utmos_wrapped(tmp_path)
    model.save_pretrained(tmp_path / "dir")
    cfg_path = tmp_path / "dir" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["architecture"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="from_torchmos"):
        TorchmosForAudioQuality.from_pretrained(tmp_path / "dir")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    net = VQScoreModel(codebook_size=16, codebook_dim=8, channels=(16, 8), kmeans_init=False)
    net.save(tmp_path / "vq.pt")
    model = TorchmosForAudioQuality.from_torchmos("vqscore", checkpoint=tmp_path / "vq.pt")
    model.save_pretrained(tmp_path / "d")
    weights = tmp_path / "d" / "model.safetensors"
    sd = load_file(str(weights))
    del sd["net.decoder.conv_dec6.bias"]
    save_file(sd, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['net.decoder.conv_dec6.bias'\]"):
        TorchmosForAudioQuality.from_pretrained(tmp_path / "d")
