"""Pruning a SCOREQ-style predictor (issue 14): layers and heads are removed, the pruned
model computes what its transformers modules compute, saves in SCOREQ's official layout
and loads back through every SCOREQ loader; `torchmos train distill --student
pruned-scoreq` fine-tunes it on a teacher's scores."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from torchmos import cli, synth
from torchmos.models.scoreq import ScoreqModel
from torchmos.models.scoreq_prune import attention_widths, head_importance, keep_layers, prune_heads

SMALL = {"num_hidden_layers": 3, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 192,
         "num_conv_pos_embedding_groups": 4, "num_conv_pos_embeddings": 16, "conv_dim": (32,) * 7}


@pytest.fixture(autouse=True)
def _home(tmp_home, one_thread):
    """No network, no user cache; one thread."""


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    torch.manual_seed(0)
    net = ScoreqModel("nr", **SMALL)
    with torch.no_grad():  # make the heads' strengths clearly different
        net.backbone.encoder.layers[0].attention.v_proj.weight[:64] *= 0.1
    path = tmp_path_factory.mktemp("scoreq") / "small.pt"
    torch.save(net.to_official_state_dict(), path)
    return path


def _clips():
    return [synth.speech_like(1.2, 16000, seed=3), synth.speech_like(2.1, 16000, seed=4)]


def test_pruning_removes_layers_and_the_weakest_heads(small_file, tmp_path):
    net = ScoreqModel.from_pretrained(checkpoint=small_file)
    before = sum(p.numel() for p in net.parameters())
    weak = int(head_importance(net.backbone.encoder.layers[0].attention).argmin())
    assert weak == 0  # the head scaled down above
    keep_layers(net, 2)
    kept = prune_heads(net, 1)
    assert len(net.backbone.encoder.layers) == 2 and kept[0] == [1]
    att = net.backbone.encoder.layers[0].attention
    assert att.q_proj.weight.shape == (64, 128) and att.out_proj.weight.shape == (128, 64)
    assert sum(p.numel() for p in net.parameters()) < before
    clips = _clips()
    fast = net(clips)  # torchmos' fast inference path
    with torch.no_grad():  # the transformers modules themselves
        slow = net.mos_layer(torch.nn.functional.normalize(net.train_pooled(clips), dim=1)).squeeze(-1)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    path = tmp_path / "pruned.pt"
    torch.save(net.to_official_state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert attention_widths(sd, "pt_model.ssl_model.") == {0: 64, 1: 64}
    back = ScoreqModel.from_pretrained(checkpoint=path)
    assert len(back.backbone.encoder.layers) == 2
    torch.testing.assert_close(back(clips), fast, atol=1e-5, rtol=0)
    from torchmos import functional as F

    torch.testing.assert_close(F.scoreq_nr(clips, 16000, checkpoint=str(path)), fast, atol=1e-5, rtol=0)


def test_pruning_refuses_impossible_sizes(small_file):
    net = ScoreqModel.from_pretrained(checkpoint=small_file)
    with pytest.raises(ValueError, match="keep between 1 and that, got 4"):
        keep_layers(net, 4)
    with pytest.raises(ValueError, match="layer 0 has 2 heads"):
        prune_heads(net, 3)


def test_cli_prunes_and_fine_tunes_on_the_teacher(small_file, tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(4):
        sf.write(str(audio / f"c{i}.wav"), synth.speech_like(1.0, 16000, seed=60 + i).numpy(), 16000)
    out = tmp_path / "run"
    argv = ["train", "distill", "--audio", str(audio), "--out", str(out), "--teacher", "distillmos",
            "--student", "pruned-scoreq", "--student-init", str(small_file), "--keep-layers", "1",
            "--keep-heads", "1", "--batch-size", "2", "--variants", "1", "--valid-files", "1", "--steps", "3",
            "--crop-seconds", "1.0", "--lr", "1e-3", "--no-progress"]
    assert cli.main(argv) == 0
    net = ScoreqModel.from_pretrained(checkpoint=out / "student.pt")
    assert len(net.backbone.encoder.layers) == 1
    assert net.backbone.encoder.layers[0].attention.q_proj.weight.shape[0] == 64
    start = ScoreqModel.from_pretrained(checkpoint=small_file)
    assert not torch.equal(net.mos_layer.weight, start.mos_layer.weight)  # fine-tuned
    # the conv feature encoder stays frozen by default
    torch.testing.assert_close(net.backbone.feature_extractor.conv_layers[1].conv.weight,
                               start.backbone.feature_extractor.conv_layers[1].conv.weight, atol=0, rtol=0)
    capsys.readouterr()
    assert cli.main(["score", str(audio / "c0.wav"), "--model", "scoreq-nr-natural", "--checkpoint",
                     str(out / "student.pt"), "-q"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()[-2:]
    x, _ = sf.read(str(audio / "c0.wav"), dtype="float32")
    want = float(net([torch.from_numpy(x)])[0])
    assert abs(float(row.split(",")[header.split(",").index("score")]) - want) < 1e-3
