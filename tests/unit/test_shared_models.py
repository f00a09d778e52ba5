"""Shared models are frozen and private (DESIGN.md): a cached network serves many callers
only while no caller can change it.

* SCOREQ keeps its registered Parameters across dtype moves, so an optimiser built
  earlier trains the weights the forward uses;
* the functional model cache loads once under concurrent first use, with canonical
  device keys;
* MSR-UTMOS takes the sample rate as a call argument (nothing written onto the shared
  SFI layer), so concurrent callers at different rates do not disturb each other;
* DistillMOS decides bf16 for the device the model runs on, not for the host CPU;
* MSR-UTMOS reads the number of attention heads from the checkpoint.

Everything runs on tiny random models.
"""

from __future__ import annotations

import math
import threading
import time
import warnings

import pytest
import torch
from torch import nn

import torchmos.functional as F
from torchmos import models
from torchmos.models import distillmos as dm
from torchmos.models.msr_utmos import (  # noqa: E402
    MsrUtmosModel,
    SFISSLModel,
    build_backbone,
    lightning_config,
    load_teacher,
    tiny_config,
)
from torchmos.models.scoreq import ScoreqModel, _adjacent  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _clear_model_cache() -> None:
    F._clear_cache()


@pytest.fixture
def empty_cache():
    _clear_model_cache()
    yield
    _clear_model_cache()


def _run_together(n: int, target) -> list:
    """Run ``target(i)`` in ``n`` threads released together; results in order, errors raised."""
    start = threading.Barrier(n, timeout=30)
    out: list = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            out[i] = target(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return out


# ----------------------------------------------------------------------------- 1. SCOREQ



SCOREQ_TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                   num_conv_pos_embedding_groups=4, num_conv_pos_embeddings=16, conv_dim=(32,) * 7)


def _scoreq(seed: int = 0) -> ScoreqModel:
    torch.manual_seed(seed)
    return ScoreqModel("nr", **SCOREQ_TINY)


def _qkv_params(model: ScoreqModel) -> list[nn.Parameter]:
    out = []
    for layer in model.backbone.encoder.layers:
        att = layer.attention
        for m in (att.q_proj, att.k_proj, att.v_proj):
            out += [m.weight, m.bias]
    return out


def _clips() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(8000, generator=g) * 0.1, torch.randn(11200, generator=g) * 0.1]


def test_scoreq_parameters_keep_their_identity_across_dtype_moves():
    model = _scoreq()
    ids = [id(p) for p in model.parameters()]
    names = list(model.state_dict())
    for move in (lambda m: m.to(torch.float64), lambda m: m.double(), lambda m: m.half(),
                 lambda m: m.float(), lambda m: m.to("cpu")):
        assert move(model) is model
        assert [id(p) for p in model.parameters()] == ids
        assert list(model.state_dict()) == names
    # the fused q/k/v layout is still there (one GEMM), under the same Parameter objects
    att = model.backbone.encoder.layers[0].attention
    assert _adjacent([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
    assert model.embed(_clips()).dtype == torch.float32


def test_an_optimiser_built_before_a_round_trip_trains_the_weights_forward_uses():
    model = _scoreq()
    qkv = _qkv_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.double().float()  # a dtype round trip after the optimiser was built
    x = _clips()
    before = model.pooled(x)
    # gradients of the training path reach the optimiser's q/k/v parameters
    model.train_pooled(x).pow(2).mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in qkv)
    # a step on q/k/v alone changes what inference computes
    for p in model.parameters():
        if all(p is not q for q in qkv):
            p.grad = None
    opt.step()
    after = model.pooled(x)
    assert not torch.allclose(after, before, atol=1e-6)
    fresh = _scoreq(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.pooled(x), after)


# ----------------------------------------------------------------------------- 2. the functional cache


class _FakeModel(nn.Module):
    """Stands in for a predictor: remembers where it was sent, moves nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_to: list[str] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.sent_to.append(str(args[0] if args else kwargs.get("device")))
        return self


def _counting_loader(monkeypatch, delay: float = 0.0) -> list[tuple]:
    calls: list[tuple] = []

    def load(name, checkpoint=None, sha256=None, **options):
        calls.append((name, checkpoint, options))
        time.sleep(delay)  # a slow load: the window in which other threads arrive
        return _FakeModel()

    monkeypatch.setattr(models, "load", load)
    return calls


def test_four_threads_on_a_cold_cache_load_the_model_once(monkeypatch, empty_cache):
    calls = _counting_loader(monkeypatch, delay=0.3)
    got = _run_together(4, lambda i: F.get_model("distillmos", precision="fp32"))
    assert len(calls) == 1
    assert all(m is got[0] for m in got)
    # a different key is another entry, loaded once too
    other = _run_together(3, lambda i: F.get_model("distillmos", precision="bf16"))
    assert len(calls) == 2 and all(m is other[0] for m in other) and other[0] is not got[0]


def test_device_keys_are_canonical(monkeypatch):
    assert F._device_key("cpu") == F._device_key(torch.device("cpu")) == F._device_key("cpu:0") == "cpu"
    # an index-less accelerator device is the current one; no GPU needed to check the key
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert F._device_key("cuda") == F._device_key("cuda:0") == F._device_key(torch.device("cuda", 0))
    assert F._device_key("cuda") == "cuda:0" and F._device_key("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert F._device_key("cuda") == "cuda:1" != F._device_key("cuda:0")


def test_cuda_and_cuda0_are_one_cache_entry(monkeypatch, empty_cache):
    calls = _counting_loader(monkeypatch)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    a = F.get_model("distillmos", device="cuda")
    b = F.get_model("distillmos", device="cuda:0")
    c = F.get_model("distillmos", device=torch.device("cuda", 0))
    assert a is b is c and len(calls) == 1 and a.sent_to == ["cuda:0"]
    assert F.get_model("distillmos", device="cpu") is F.get_model("distillmos", device="cpu:0")
    assert len(calls) == 2


def test_a_failed_load_is_not_cached(monkeypatch, empty_cache):
    state = {"fail": True}

    def load(name, checkpoint=None, sha256=None, **options):
        if state["fail"]:
            raise ValueError("broken file")
        return _FakeModel()

    monkeypatch.setattr(models, "load", load)
    with pytest.raises(ValueError, match="broken file"):
        F.get_model("distillmos")
    state["fail"] = False
    assert isinstance(F.get_model("distillmos"), _FakeModel)


# ----------------------------------------------------------------------------- 3. MSR-UTMOS rates


@pytest.fixture(scope="module")
def msr_model() -> MsrUtmosModel:
    teacher = load_teacher("tiny", seed=0)
    torch.manual_seed(0)
    return MsrUtmosModel(SFISSLModel.from_teacher(teacher, sfi={"filter": "gauss"}, fit_steps=0)).eval()


def _tone(seconds: float, fs: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * fs)) / fs
    f = 200 + 1800 * torch.rand(6, generator=g)
    return 0.1 * torch.sin(2 * math.pi * f[:, None] * t).sum(0) + 0.01 * torch.randn(t.shape[0], generator=g)


def test_a_call_writes_no_rate_onto_the_shared_sfi_layer(msr_model):
    conv0 = msr_model.ssl.conv0
    default = conv0.sample_rate
    x48 = _tone(0.5, 48000, seed=1)
    with torch.no_grad():
        msr_model([x48], 48000)
        msr_model.ssl(x48[None], 48000)
    assert conv0.sample_rate == default == msr_model.ssl.sample_rate
    # the layer's own default still applies to calls without a rate
    x16 = _tone(0.5, 16000, seed=2)
    with torch.no_grad():
        assert torch.equal(msr_model.ssl(x16[None]).last_hidden_state,
                           msr_model.ssl(x16[None], default).last_hidden_state)


def test_concurrent_calls_at_different_rates_score_as_sequential_calls(msr_model):
    clips = {8000: _tone(0.6, 8000, seed=3), 48000: _tone(0.6, 48000, seed=4)}
    rates = list(clips)
    want = {r: msr_model([clips[r]], r) for r in rates}
    # hold both threads at the SFI layer until both are inside a call: the interleaving
    # in which a rate written onto the shared layer would be read by the other thread
    meet = threading.Barrier(2, timeout=30)
    waited: set[int] = set()

    def hold(module, args):
        me = threading.get_ident()
        if me not in waited:
            waited.add(me)
            meet.wait()

    handle = msr_model.ssl.conv0.register_forward_pre_hook(hold)
    try:
        got = _run_together(2, lambda i: msr_model([clips[rates[i]]], rates[i]))
    finally:
        handle.remove()
    for r, g in zip(rates, got):
        assert torch.allclose(g, want[r], atol=1e-6), r


# ----------------------------------------------------------------------------- 4. DistillMOS bf16


def test_bf16_is_decided_per_device(monkeypatch):
    monkeypatch.setattr(dm, "bf16_supported", lambda: False)  # the host CPU has none
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert dm.bf16_supported_on(torch.device("cpu")) is False
    assert dm.bf16_supported_on("cuda") is True
    entered: list[int] = []

    class _Ctx:  # torch.cuda.device(i) without a GPU
        def __init__(self, i):
            self.i = i

        def __enter__(self):
            entered.append(self.i)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", _Ctx)
    assert dm.bf16_supported_on(torch.device("cuda", 1)) is True and entered == [1]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert dm.bf16_supported_on("cuda") is False
    monkeypatch.setattr(dm, "bf16_supported", lambda: True)
    assert dm.bf16_supported_on("cpu") is True and dm.bf16_supported_on("cuda") is False
    assert dm.bf16_supported_on("meta") is False


def _cnn_dtype(model: dm.DistillMOSModel, clip: torch.Tensor) -> tuple[torch.dtype, torch.Tensor]:
    seen: list[torch.dtype] = []
    handle = model.cnn.cnn[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        score = model([clip])
    finally:
        handle.remove()
    return seen[0], score


def test_a_bf16_model_follows_the_device_it_runs_on(monkeypatch):
    # built while the CPU has no bf16: no fp32 decision is baked in at construction
    monkeypatch.setattr(dm, "bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = dm.DistillMOSModel(precision="bf16")
    assert model.precision_on("cuda") == "bf16"  # moved to a GPU with bf16, it uses bf16 there
    assert model.precision_on("cpu") == "fp32" and model.precision == "fp32"
    clip = torch.randn(16000) * 0.1
    # on this CPU: fp32, with the fallback warning, once
    with pytest.warns(RuntimeWarning, match="falling back to exact fp32"):
        dtype, fallback = _cnn_dtype(model, clip)
    assert dtype == torch.float32
    exact = dm.DistillMOSModel()
    exact.load_state_dict(model.state_dict())
    assert torch.equal(fallback, exact([clip]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model([clip])  # warned once per device
    # the same model on a device with bf16 (here: the CPU gaining it) runs the CNN in bf16
    monkeypatch.setattr(dm, "bf16_supported", lambda: True)
    assert model.precision == "bf16"
    dtype, _ = _cnn_dtype(model, clip)
    assert dtype == torch.bfloat16


# ----------------------------------------------------------------------------- 5. MSR-UTMOS heads


def _to_lightning(model: MsrUtmosModel) -> dict[str, torch.Tensor]:
    """The authors' Lightning layout of a model with a modulated-Gaussian SFI layer."""
    unit = 2 * math.pi * model.ssl.conv0.analog.unit_hz
    sfi = "ssl.backbone.feature_extractor.conv_layers.0.conv.analog."
    theirs = "ssl_model.feature_extractor.conv_layers.0.conv.continuous_filters."
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith(sfi):
            name, value = {"mu": ("mus", v * unit), "phi": ("phase", v),
                           "sigma": ("_ln_sigma2s", 2 * torch.log(v * unit))}[k[len(sfi):]]
            out[theirs + name] = value
        elif k.startswith("ssl.backbone."):
            k2 = "ssl_model." + k[len("ssl.backbone."):]
            out[k2.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v")] = v
        elif k.startswith("head."):
            out["pred_liner." + k[len("head."):]] = v
        else:
            out[k.replace("listener_embedding", "listenr_embedding")] = v
    return out


def _msr(arch: str, hidden: int, heads: int) -> MsrUtmosModel:
    # WavLM's max_bucket_distance is in no weight's shape, so a Lightning state dict cannot
    # carry it: use transformers' default (the tiny test config's 80 changes WavLM's scores
    # with transformers 5.4, seen in deps_oldest)
    extra = {"max_bucket_distance": 800} if arch == "wavlm" else {}
    teacher_cfg = tiny_config(arch, hidden_size=hidden, num_attention_heads=heads, **extra)
    torch.manual_seed(3)
    teacher = build_backbone(arch, teacher_cfg).eval()
    return MsrUtmosModel(SFISSLModel.from_teacher(teacher, sfi={"filter": "gauss"}, fit_steps=0)).eval()


@pytest.mark.parametrize("arch,hidden,heads", [("hubert", 128, 2), ("wavlm", 128, 4)])
def test_lightning_checkpoints_give_the_head_count(arch, hidden, heads):
    ours = _msr(arch, hidden, heads)
    sd = _to_lightning(ours)
    cfg = lightning_config(sd)["ssl"]["transformers_config"]
    assert cfg["num_attention_heads"] == heads
    theirs = MsrUtmosModel.from_lightning({"state_dict": sd})
    assert theirs.ssl.backbone.config.num_attention_heads == heads
    x = [_tone(0.5, 24000, seed=9)]
    assert torch.allclose(theirs(x, 24000), ours(x, 24000), atol=1e-5)
    # an explicit value still wins
    assert lightning_config(sd, transformers_config={"num_attention_heads": 8})[
        "ssl"]["transformers_config"]["num_attention_heads"] == 8


def test_torchmos_files_keep_a_non_default_head_count(tmp_path):
    ours = _msr("wav2vec2", 128, 4)
    ours.save(tmp_path / "m.pt")
    again = MsrUtmosModel.from_pretrained(checkpoint=tmp_path / "m.pt")
    assert again.ssl.backbone.config.num_attention_heads == 4
    x = [_tone(0.5, 16000, seed=10)]
    assert torch.equal(again(x, 16000), ours(x, 16000))
