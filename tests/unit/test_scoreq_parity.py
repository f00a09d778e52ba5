"""SCOREQ on the full wav2vec 2.0 BASE architecture: parity with the independent port
``scoreq-pytorch`` 0.1.0 (same random weights, saved in the official file layout), and
exact batching.

The port re-implements fairseq's modules under the official key names, so its
``state_dict()`` is the layout of the released files (minus ``mask_emb``, which is used in
pre-training only). It takes 16 kHz audio; its authors' package (alessandroragano/scoreq)
resamples with ``torchaudio.transforms.Resample(sr, 16000)`` (the default windowed sinc),
mixes channels by their mean and zero-pads to a multiple of 320 - the reference pipeline
below does the same, by its own code path.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import pytest
import torch
import torchaudio

from tests.helpers import speechlike
from torchmos import audio
from torchmos.metrics.scoreq import ScoreqNR, scoreq_nr, scoreq_ref
from torchmos.models.scoreq import ScoreqModel

port = importlib.import_module("scoreq_pytorch.scoreq_torch")  # a test dependency

TOL = 1e-4


@pytest.fixture(autouse=True)
def _home(tmp_home):
    return tmp_home


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms and biases away from their 1 / 0 init
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        if hasattr(model.model, "mos_layer"):
            model.model.mos_layer.weight.copy_(torch.randn(model.model.mos_layer.weight.shape, generator=g))
            model.model.mos_layer.bias.fill_(3.0)


@functools.cache
def reference(mode: str) -> tuple[torch.nn.Module, dict]:
    """The port's model with random weights (BASE), in eval mode, and its state_dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        torch.manual_seed(100 if mode == "nr" else 200)
        m = port.SCOREQModel(mode)
        _randomise(m, 7 if mode == "nr" else 8)
        m.eval()
        sd = {k: v.clone() for k, v in m.model.state_dict().items()}
        port.remove_weight_norm_for_jit(m)  # what SCOREQScoreTorch does after loading
    return m, sd


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("scoreq-base")
    out = {}
    for mode, name in (("nr", "adapt_nr_telephone.pt"), ("ref", "fixed_nmr_telephone.pt")):
        path = d / name
        torch.save(reference(mode)[1], path)  # the official file layout
        out[mode] = str(path)
    return out


@functools.cache
def _ours(mode: str, path: str) -> ScoreqModel:
    return ScoreqModel.from_pretrained(checkpoint=path, card=f"scoreq-{mode}-natural", mode=mode)


@pytest.fixture(scope="module")
def ours(checkpoints):
    return lambda mode: _ours(mode, checkpoints[mode])


def ref_input(x: torch.Tensor, fs: int) -> torch.Tensor:
    """The authors' preprocessing: (1, T) wave, torchaudio Resample to 16 kHz if needed."""
    wave = x[None]
    if fs != 16000:
        wave = torchaudio.transforms.Resample(fs, 16000)(wave)
    return wave


def ref_embed(mode: str, wave: torch.Tensor) -> torch.Tensor:
    m = reference(mode)[0]
    with torch.no_grad():
        x, _ = port.pad_tensor_to_multiple(m.fix_shape(wave), multiple=320, dim=-1, value=0.0)
        triplet = m.model.pt_model if mode == "nr" else m.model
        return triplet(x)[0]


# (seconds, fs): 1-15 s over 8, 16, 24 and 48 kHz; lengths are not multiples of 320
NR_CASES = [(1.0, 8000), (4.3, 8000), (14.97, 16000), (2.31, 16000), (3.3, 24000), (1.6, 24000),
            (7.3, 48000), (1.27, 48000)]
REF_CASES = [(1.0, 8000), (2.2, 16000), (1.6, 24000), (3.1, 48000)]


def test_port_keys_are_the_official_table(checkpoints):
    for mode in ("nr", "ref"):
        sd = reference(mode)[1]
        mine = set(_ours(mode, checkpoints[mode]).to_official_state_dict())
        prefix = "pt_model.ssl_model." if mode == "nr" else "ssl_model."
        assert mine - set(sd) == {prefix + "mask_emb"}  # pre-training only; absent from the port
        assert set(sd) - mine == set()


@pytest.mark.parametrize("seconds,fs", NR_CASES)
def test_nr_parity(seconds, fs, ours):
    x = speechlike(seconds, fs, seed=int(seconds * 100) + fs)
    want_emb = ref_embed("nr", ref_input(x, fs))
    with torch.no_grad():  # MosPredictor.forward: mos_layer on the normalised embedding
        want = float(reference("nr")[0].model.mos_layer(want_emb))
    m = ours("nr")
    got_emb = m.embed(audio.prepare([x], fs, 16000))[0]
    with torch.no_grad():
        got = float(m.mos_layer(got_emb))
    assert abs(got - want) < TOL, (got, want)
    assert float((got_emb - want_emb).abs().max()) < 1e-5
    assert abs(want) > 0.1  # a non-trivial head output was compared


@pytest.mark.parametrize("seconds,fs", REF_CASES)
def test_ref_parity(seconds, fs, ours):
    clean = speechlike(seconds, fs, seed=fs)
    noisy = clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(fs))
    noisy = noisy[: int(noisy.shape[0] * 0.93)]  # the pair need not have equal lengths
    et, er = ref_embed("ref", ref_input(noisy, fs)), ref_embed("ref", ref_input(clean, fs))
    want = float(torch.linalg.vector_norm(et - er))
    got = float(ours("ref").distance(audio.prepare([noisy], fs, 16000), audio.prepare([clean], fs, 16000))[0])
    assert abs(got - want) < TOL, (got, want)


def test_exact_batching_base(ours):
    """A clip's score is the same alone and in a padded batch with other lengths."""
    fs = 16000
    xs = [speechlike(s, fs, seed=i) for i, s in enumerate([0.43, 1.9, 1.17, 0.61])]
    m = ours("nr")
    alone = torch.cat([m.embed([x]) for x in xs])
    m.max_padding = 100.0  # force one padded batch of all four
    try:
        assert m._batches([x.shape[0] for x in xs]) == [[1, 2, 3, 0]]
        batch = m.embed(xs)
        emb_err = float((alone - batch).abs().max())
        assert emb_err < 1e-5, emb_err
        with torch.no_grad():
            alone_s = m.mos_layer(alone).squeeze(-1)
        # and through a padded (B, T) tensor + lengths, in the model's forward
        padded, lengths = audio.pad_batch(xs)
        assert float((m(audio.prepare(padded, fs, 16000, lengths)) - alone_s).abs().max()) < TOL
    finally:
        m.max_padding = None
    # the naive padded batch of the reference does NOT give these scores (why masking matters)
    ref = reference("nr")[0]
    with torch.no_grad():
        naive = ref(torch.nn.functional.pad(xs[0], (0, padded.shape[1] - xs[0].shape[0]))[None])
        single = ref(xs[0][None])
    assert float((naive - single).abs().max()) > 1e-3
    assert abs(float(single[0]) - float(alone_s[0])) < TOL


def test_functional_twins(checkpoints, ours):
    fs = 24000
    a, b = speechlike(0.8, fs, seed=1), speechlike(1.1, fs, seed=2)
    got = scoreq_nr([a, b], fs=fs, checkpoint=checkpoints["nr"])
    assert got.shape == (2,)
    want = ours("nr")(audio.prepare([a, b], fs, 16000))
    assert torch.allclose(got, want, atol=TOL)
    d = scoreq_ref([a, b], [b, a], fs=fs, checkpoint=checkpoints["ref"])
    assert d.shape == (2,) and torch.allclose(d[0], d[1], atol=TOL)
    with pytest.raises(audio.AudioError, match="pairs"):
        scoreq_ref([a, b], [a], fs=fs, checkpoint=checkpoints["ref"])


def test_bf16_is_opt_in_and_close(checkpoints, ours):
    m16 = ScoreqModel.from_pretrained(checkpoint=checkpoints["nr"], card="scoreq-nr-natural", mode="nr",
                                      precision="bf16")
    assert m16.backbone.encoder.layers[0].feed_forward.intermediate_dense.weight.dtype == torch.bfloat16
    assert m16.mos_layer.weight.dtype == torch.float32
    x = [speechlike(1.5, 16000, seed=3)]
    err = float((m16.embed(x) - ours("nr").embed(x)).abs().max())
    assert 0 < err < 0.05, err


def test_metric_on_base(checkpoints):
    metric = ScoreqNR(checkpoint=checkpoints["nr"], fs=48000)
    x = speechlike(1.27, 48000, seed=5)
    metric.update([x])
    with torch.no_grad():  # the port's own forward (pads to 320, embeds, head)
        want = float(reference("nr")[0](ref_input(x, 48000)))
    assert abs(float(metric.compute()) - want) < TOL
