"""SCOREQ: the strict checkpoint converter, the metrics, chunking and the hub, on a tiny
backbone (fast). Parity with the reference package and exact batching on the full BASE
architecture are in test_scoreq_parity.py.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import pytest
import soundfile as sf
import torch

from tests.helpers import speechlike
from torchmos import audio, hub
from torchmos.metrics.scoreq import ScoreqNR, ScoreqRef
from torchmos.models.scoreq import HOP, ScoreqModel, chunk_bounds, official_key

# A small wav2vec 2.0 with the BASE layout (7 convs, group norm, post-norm layers).
TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
            num_conv_pos_embedding_groups=4, num_conv_pos_embeddings=16, conv_dim=(32,) * 7)
PREFIX = {"nr": "pt_model.ssl_model.", "ref": "ssl_model."}


@pytest.fixture(autouse=True)
def _home(tmp_home):
    """Every test gets an empty TORCHMOS_HOME: nothing is written to the real cache."""
    return tmp_home


def tiny_model(mode: str, seed: int = 0, **kw) -> ScoreqModel:
    torch.manual_seed(seed)
    m = ScoreqModel(mode, **TINY, **kw)
    with torch.no_grad():  # make every norm and bias non-trivial
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        if mode == "nr":
            m.mos_layer.weight.normal_()
            m.mos_layer.bias.fill_(3.0)
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[str, ScoreqModel]]:
    d = tmp_path_factory.mktemp("scoreq")
    out = {}
    for mode in ("nr", "ref"):
        m = tiny_model(mode, seed=1 if mode == "nr" else 2)
        path = d / f"{mode}.pt"
        torch.save(m.to_official_state_dict(), path)
        out[mode] = (str(path), m)
    return out


def clip(seconds: float, seed: int, fs: int = 16000) -> torch.Tensor:
    return speechlike(seconds, fs, seed=seed)


# ----------------------------------------------------------------------------- converter


@pytest.mark.parametrize("mode", ["nr", "ref"])
def test_official_layout_round_trip(mode, files):
    path, src = files[mode]
    sd = torch.load(path, weights_only=True)
    assert all(k.startswith(PREFIX[mode]) or k.startswith(("pt_model.embedding_layer.", "embedding_layer.", "mos_layer."))
               for k in sd)
    assert PREFIX[mode] + "encoder.pos_conv.0.weight_g" in sd and PREFIX[mode] + "mask_emb" in sd
    assert (PREFIX[mode] + "feature_extractor.conv_layers.0.2.weight") in sd
    assert ("mos_layer.weight" in sd) == (mode == "nr")
    m = ScoreqModel.from_pretrained(checkpoint=path, card=f"scoreq-{mode}-natural", mode=mode, **TINY)
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_key_table_examples():
    assert official_key("backbone.encoder.pos_conv_embed.conv.parametrizations.weight.original0", "nr") == \
        "pt_model.ssl_model.encoder.pos_conv.0.weight_g"
    assert official_key("backbone.encoder.layers.11.feed_forward.output_dense.bias", "ref") == \
        "ssl_model.encoder.layers.11.fc2.bias"
    assert official_key("backbone.encoder.layers.0.layer_norm.weight", "ref") == \
        "ssl_model.encoder.layers.0.self_attn_layer_norm.weight"
    assert official_key("backbone.feature_projection.projection.weight", "nr") == \
        "pt_model.ssl_model.post_extract_proj.weight"
    assert official_key("backbone.masked_spec_embed", "ref") == "ssl_model.mask_emb"
    assert official_key("embedding_layer.1.weight", "nr") == "pt_model.embedding_layer.1.weight"


@pytest.mark.parametrize("mode", ["nr", "ref"])
def test_missing_key_is_named(mode, files):
    sd = torch.load(files[mode][0], weights_only=True)
    key = PREFIX[mode] + "encoder.layers.1.self_attn.k_proj.weight"
    del sd[key]
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        ScoreqModel(mode, **TINY).load_official(sd)


@pytest.mark.parametrize("mode", ["nr", "ref"])
def test_extra_key_is_named(mode, files):
    sd = torch.load(files[mode][0], weights_only=True)
    key = PREFIX[mode] + "quantizer.vars"
    sd[key] = torch.zeros(3)
    with pytest.raises(ValueError, match=f"unexpected key '{key}'"):
        ScoreqModel(mode, **TINY).load_official(sd)


@pytest.mark.parametrize("mode", ["nr", "ref"])
def test_misshaped_key_is_named(mode, files):
    sd = torch.load(files[mode][0], weights_only=True)
    key = PREFIX[mode] + "encoder.pos_conv.0.weight_v"
    sd[key] = sd[key][:, :, :-1]
    with pytest.raises(ValueError, match=f"key '{key}' has shape"):
        ScoreqModel(mode, **TINY).load_official(sd)


def test_head_keys_are_strict_too(files):
    sd = torch.load(files["nr"][0], weights_only=True)
    del sd["mos_layer.bias"]
    with pytest.raises(ValueError, match="missing key 'mos_layer.bias'"):
        ScoreqModel("nr", **TINY).load_official(sd)


def test_wrong_mode_file_says_so(files):
    nr = torch.load(files["nr"][0], weights_only=True)
    with pytest.raises(ValueError, match="no-reference .* scoreq-nr-"):
        ScoreqModel("ref", **TINY).load_official(nr)
    ref = torch.load(files["ref"][0], weights_only=True)
    with pytest.raises(ValueError, match="reference .* scoreq-ref-"):
        ScoreqModel("nr", **TINY).load_official(ref)


def test_weight_norm_parametrisation_names_and_optional_mask_emb(files):
    path, src = files["ref"]
    sd = torch.load(path, weights_only=True)
    p = PREFIX["ref"] + "encoder.pos_conv.0."
    sd[p + "parametrizations.weight.original0"] = sd.pop(p + "weight_g")
    sd[p + "parametrizations.weight.original1"] = sd.pop(p + "weight_v")
    del sd[PREFIX["ref"] + "mask_emb"]  # training-only; absent from re-exported files
    m = ScoreqModel("ref", **TINY)
    m.load_official(sd)
    x = [clip(0.5, 3)]
    assert torch.allclose(m.embed(x), src.embed(x), atol=1e-6)
    # both spellings at once is ambiguous
    sd[p + "weight_g"] = sd[p + "parametrizations.weight.original0"]
    with pytest.raises(ValueError, match="both"):
        m.load_official(sd)


def test_not_a_state_dict():
    with pytest.raises(ValueError, match="flat state_dict"):
        ScoreqModel("nr", **TINY).load_official([1, 2])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- model


def test_padding_to_320_and_too_short(files):
    m = files["nr"][1]
    x = clip(0.31, 4)
    assert x.shape[0] % HOP != 0
    padded = torch.nn.functional.pad(x, (0, -x.shape[0] % HOP))
    assert torch.allclose(m([x]), m([padded]), atol=1e-6)  # zero-pad to a multiple of 320
    with pytest.raises(ValueError, match="more than 320 samples"):
        m([torch.randn(320)])
    with pytest.raises(RuntimeError, match="reference-mode"):
        files["ref"][1]([x])


def test_embeddings_are_unit_vectors_and_distance_in_range(files):
    m = files["ref"][1]
    a, b = [clip(0.6, 5), clip(1.1, 6)], [clip(0.9, 7), clip(0.4, 8)]
    e = m.embed(a)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-6)
    d = m.distance(a, b)
    assert torch.allclose(d, (m.embed(a) - m.embed(b)).norm(dim=1), atol=1e-5)
    assert bool(((d >= 0) & (d <= 2)).all())
    assert torch.allclose(m.distance(a, a), torch.zeros(2), atol=1e-3)
    with pytest.raises(ValueError, match="in pairs"):
        m.distance(a, b[:1])


def test_distance_to_set_is_mean_over_the_set(files):
    m = files["ref"][1]
    refs = [clip(0.5, 10), clip(0.8, 11), clip(0.7, 12)]
    x = [clip(0.6, 13), clip(1.0, 14)]
    r = m.embed(refs)
    got = m.distance_to_set(x, r)
    want = torch.stack([m.distance(x, [c, c]) for c in refs], dim=1).mean(1)
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="ref_embeddings must have shape"):
        m.distance_to_set(x, r[:, :5])


def test_small_batch_exact_with_tiny_model(files):
    m = ScoreqModel.from_pretrained(checkpoint=files["nr"][0], card="scoreq-nr-natural", mode="nr", **TINY)
    m.max_padding = 100.0  # one padded batch
    xs = [clip(0.35, 20), clip(1.3, 21), clip(0.71, 22)]
    assert len(m._batches([x.shape[0] for x in xs])) == 1
    alone = torch.cat([m.embed([x]) for x in xs])
    together = m.embed(xs)
    assert (alone - together).abs().max() < 1e-5
    m.max_padding, m.max_batch_samples = 0.25, 16000  # other groupings, same scores
    assert len(m._batches([x.shape[0] for x in xs])) == 3
    assert (m.embed(xs) - alone).abs().max() < 1e-5
    m.max_padding, m.max_batch_samples = None, 10 ** 9  # CPU default: only equal lengths share a batch
    assert m._batches([3200, 3200, 1600, 3200]) == [[0, 1, 3], [2]]
    assert (m.embed(xs + xs[:1]) - torch.cat([alone, alone[:1]])).abs().max() < 1e-5


def test_same_computation_as_transformers_forward(files):
    """Our loop over the backbone's modules equals transformers' own Wav2Vec2Model forward."""
    m = files["nr"][1]
    xs = [clip(0.9, 25), clip(0.5, 26)]
    with torch.inference_mode():
        x = torch.nn.functional.pad(xs[0], (0, -xs[0].shape[0] % HOP))
        feats = m._features(x)
        theirs = m.backbone.feature_extractor(x[None])[0].t()
        assert (feats - theirs).abs().max() < 1e-5
        hidden = m.backbone(x[None]).last_hidden_state
        assert torch.allclose(m.pooled([xs[0]]), hidden.mean(1), atol=1e-5)
        # the encoder with a padding mask, on the valid frames
        h = torch.randn(2, 30, TINY["hidden_size"], generator=torch.Generator().manual_seed(0))
        mask = torch.ones(2, 30, dtype=torch.bool)
        mask[1, 21:] = False
        ours = m._transformer(h.clone(), mask)
        ref = m.backbone.encoder(h.clone(), attention_mask=mask).last_hidden_state
        assert (ours - ref)[mask].abs().max() < 1e-5


def test_fused_qkv_views_survive_moves_and_loads(files):
    """q/k/v weights live side by side (one GEMM); broken adjacency falls back, then re-fuses."""
    from torchmos.models.scoreq import _adjacent

    path, src = files["ref"]
    m = ScoreqModel.from_pretrained(checkpoint=path, card="scoreq-ref-natural", mode="ref", **TINY)
    att = m.backbone.encoder.layers[0].attention
    ws = lambda: [att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]  # noqa: E731
    assert _adjacent(ws())
    x = [clip(0.6, 24)]
    want = src.embed(x)
    assert torch.equal(m.embed(x), want)
    att.k_proj.weight = torch.nn.Parameter(att.k_proj.weight.detach().clone())  # e.g. a user's surgery
    assert not _adjacent(ws())
    assert torch.equal(m.embed(x), want)  # concatenated on the fly
    m.to("cpu")  # any .to() re-fuses
    assert _adjacent(ws())
    m.load_official(torch.load(path, weights_only=True))  # loads copy into the views
    assert _adjacent(ws()) and torch.equal(m.embed(x), want)
    assert set(m.state_dict()) == set(src.state_dict())


def test_long_clip_conv_encoder_in_blocks(files):
    """Long clips run the conv encoder in time blocks (bounded memory), same features."""
    m = ScoreqModel.from_pretrained(checkpoint=files["nr"][0], card="scoreq-nr-natural", mode="nr", **TINY)
    x = clip(1.7, 23)
    x = torch.nn.functional.pad(x, (0, -x.shape[0] % HOP))
    with torch.inference_mode():
        whole = m._features(x)
        for block in (1, 7, 40):
            m.block_frames = block
            assert (m._features(x) - whole).abs().max() < 1e-5, block
    assert whole.shape == (x.shape[0] // HOP - 1, 32)


# ----------------------------------------------------------------------------- chunking


def test_chunk_bounds():
    assert chunk_bounds(320 * 10, 320 * 4) == [(0, 1280), (1280, 2240), (2240, 3200)]
    for units in range(1, 40):
        b = chunk_bounds(units * HOP, 7 * HOP)
        assert b[0][0] == 0 and b[-1][1] == units * HOP
        assert all(e - s <= 7 * HOP and (e - s) % HOP == 0 for s, e in b)
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
        assert max(e - s for s, e in b) - min(e - s for s, e in b) <= HOP
    with pytest.raises(ValueError):
        ScoreqModel("nr", chunk_seconds=0.1, **TINY)


def test_chunked_equals_whole_when_clip_fits(files):
    path = files["nr"][0]
    whole = ScoreqModel.from_pretrained(checkpoint=path, card="scoreq-nr-natural", mode="nr", **TINY)
    chunked = ScoreqModel.from_pretrained(checkpoint=path, card="scoreq-nr-natural", mode="nr",
                                          chunk_seconds=2.0, **TINY)
    xs = [clip(1.9, 30), clip(0.45, 31), clip(2.0, 32)]
    assert (whole(xs) - chunked(xs)).abs().max() < 1e-5


def test_chunked_is_mean_of_chunk_frames(files):
    path, whole = files["nr"]
    chunked = ScoreqModel.from_pretrained(checkpoint=path, card="scoreq-nr-natural", mode="nr",
                                          chunk_seconds=1.0, **TINY)
    x = clip(2.5, 33)
    xp = torch.nn.functional.pad(x, (0, -x.shape[0] % HOP))
    bounds = chunk_bounds(xp.shape[0], chunked.chunk_samples)
    assert len(bounds) == 3
    pieces = [xp[s:e] for s, e in bounds]
    frames = torch.tensor([(e - s) // HOP - 1 for s, e in bounds], dtype=torch.float32)
    pooled = whole.pooled(pieces)
    want = torch.nn.functional.normalize((pooled * frames[:, None]).sum(0, keepdim=True), dim=1)
    assert torch.allclose(chunked.embed([x]), want, atol=1e-5)
    assert torch.allclose(chunked([x]), whole.mos_layer(want).squeeze(-1), atol=1e-5)


# ----------------------------------------------------------------------------- metrics


def test_nr_metric(files):
    path, m = files["nr"]
    metric = ScoreqNR(domain="natural", fs=24000, checkpoint=path, backbone_config=TINY, per_utterance=True)
    xs = [clip(0.8, 40, 24000), clip(1.3, 41, 24000), clip(0.5, 42, 24000)]
    metric.update(xs[:2], ids=["a", "b"])
    metric.update(xs[2], ids=["c"])
    out = metric.compute()
    want = m(audio.prepare(xs, 24000, 16000))
    assert torch.allclose(out["scores"], want, atol=1e-5)
    assert torch.allclose(out["mean"], want.mean(), atol=1e-5)
    assert out["ids"] == ["a", "b", "c"]
    assert ScoreqNR.higher_is_better and metric.card.name == "scoreq-nr-natural"
    sd = metric.state_dict()
    assert not any("backbone" in k or "mos_layer" in k or "_net" in k for k in sd)
    assert sum(v.numel() for v in sd.values() if isinstance(v, torch.Tensor)) < 100
    assert not list(metric.parameters())
    with pytest.raises(ValueError, match="domain must be"):
        ScoreqNR(domain="telephone", checkpoint=path)


def test_ref_metric_full_reference(files):
    path, m = files["ref"]
    metric = ScoreqRef(domain="synthetic", checkpoint=path, backbone_config=TINY)
    assert metric.card.name == "scoreq-ref-synthetic"
    assert ScoreqRef.higher_is_better is False
    assert (ScoreqRef.plot_lower_bound, ScoreqRef.plot_upper_bound) == (0.0, 2.0)
    clean = torch.stack([clip(1.0, 50), clip(1.0, 51)])
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    metric.update(noisy, clean, lengths=[16000, 12000], target_lengths=[16000, 9000])
    want = m.distance([noisy[0], noisy[1, :12000]], [clean[0], clean[1, :9000]])
    assert torch.allclose(metric.compute(), want.mean(), atol=1e-5)
    with pytest.raises(ValueError, match="needs a reference"):
        metric.update(noisy)
    with pytest.raises(audio.AudioError, match="2 clips in preds but 1 in target"):
        metric.update(noisy, clean[:1])


def test_ref_metric_non_matching_set(files, tmp_path):
    path, m = files["ref"]
    refs24 = [clip(1.0, 60, 24000), clip(0.7, 61, 24000), clip(1.4, 62, 24000)]
    metric = ScoreqRef(fs=24000, references=refs24, checkpoint=path, backbone_config=TINY, per_utterance=True)
    ref16 = audio.prepare(refs24, 24000, 16000)
    assert torch.allclose(metric.reference_embeddings, m.embed(ref16), atol=1e-6)
    xs = [clip(0.9, 63, 24000), clip(0.6, 64, 24000)]
    metric.update(xs)
    x16 = audio.prepare(xs, 24000, 16000)
    want = torch.stack([m.distance(x16, [r, r]) for r in ref16], 1).mean(1)
    assert torch.allclose(metric.compute()["scores"], want, atol=1e-5)
    with pytest.raises(ValueError, match="no target"):
        metric.update(xs, xs)
    # the same set given as files (read, resampled from their own rate) and as a folder
    folder = tmp_path / "clean"
    folder.mkdir()
    for i, r in enumerate(refs24):
        sf.write(folder / f"r{i}.wav", r.numpy(), 24000, subtype="FLOAT")
    by_files = ScoreqRef(references=sorted(str(p) for p in folder.iterdir()), checkpoint=path, backbone_config=TINY)
    by_folder = ScoreqRef(references=folder, checkpoint=path, backbone_config=TINY)
    assert torch.allclose(by_files.reference_embeddings, metric.reference_embeddings, atol=1e-6)
    assert torch.allclose(by_folder.reference_embeddings, metric.reference_embeddings, atol=1e-6)
    with pytest.raises(audio.AudioError, match="references"):
        ScoreqRef(references=[], checkpoint=path, backbone_config=TINY)


def test_reference_cache_follows_device(files):
    path, _ = files["ref"]
    metric = ScoreqRef(references=[clip(0.5, 70)], checkpoint=path, backbone_config=TINY)
    assert metric.reference_embeddings.device.type == "cpu"
    assert not any("ref" in k for k in metric.state_dict())
    metric.to("meta")  # the only other device on a CPU-only machine
    assert metric.reference_embeddings.device.type == "meta"
    assert metric.net.device.type == "meta"
    assert metric.reference_embeddings.dtype == torch.float32


# ----------------------------------------------------------------------------- hub


def test_trust_on_first_use_download(files, tmp_home, file_server, monkeypatch):
    path, m = files["nr"]
    data = open(path, "rb").read()
    url = file_server.add("/records/13860326/files/adapt_nr_telephone.pt", data)
    card = hub.get_card("scoreq-nr-natural")
    assert card.weights.sha256 is None and card.weights.urls[0].startswith("https://zenodo.org/records/13860326/")
    monkeypatch.setitem(hub.CARDS, card.name, dataclasses.replace(
        card, weights=dataclasses.replace(card.weights, urls=(url,))))

    first = ScoreqNR(backbone_config=TINY)
    target = tmp_home / "scoreq-nr-natural" / "adapt_nr_telephone.pt"
    recorded = target.with_name(target.name + ".sha256")
    assert target.is_file() and recorded.is_file()
    assert recorded.read_text().split()[0] == hub.sha256sum(target)
    x = [clip(0.7, 80)]
    assert torch.allclose(first.net(x), m(x), atol=1e-6)

    ScoreqNR(backbone_config=TINY)  # second load: from the cache, verified, no new download
    assert file_server.gets["/records/13860326/files/adapt_nr_telephone.pt"] == 1

    with pytest.raises(hub.HubError, match="pinned"):
        ScoreqNR(backbone_config=TINY, sha256="0" * 64)
    # the file changes behind our back: refused against the recorded checksum
    buf = io.BytesIO()
    sd = torch.load(path, weights_only=True)
    sd["mos_layer.bias"] = sd["mos_layer.bias"] + 1
    torch.save(sd, buf)
    target.write_bytes(buf.getvalue())
    with pytest.raises(hub.HubError, match="recorded at first download"):
        ScoreqNR(backbone_config=TINY)


def test_offline_message_names_the_file(offline):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(hub.HubError, match="fixed_nmr_synthetic.pt"):
            ScoreqRef(domain="synthetic", backbone_config=TINY)
