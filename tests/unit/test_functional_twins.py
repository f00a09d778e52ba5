"""The options a functional twin shares with its metric mean the same thing there.

tests/unit/test_architecture.py checks that every metric option exists on its twin with
the same name and default; here each option is shown to change the twin's result as it
changes the metric's (small random models in the official or torchmos formats).
"""

from __future__ import annotations

import pytest
import torch

import torchmos.functional as F
from torchmos import ScoreqNR, ScoreqRef, VQScore, audio, hub, synth
from torchmos.models.scoreq import ScoreqModel
from torchmos.models.vqscore import VQScoreModel

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
            num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("twins")
    torch.manual_seed(0)
    out = {"nr": str(d / "adapt_nr_telephone.pt"), "ref": str(d / "fixed_nmr_telephone.pt"), "vq": str(d / "vq.pt")}
    torch.save(ScoreqModel("nr", **TINY).to_official_state_dict(), out["nr"])
    torch.save(ScoreqModel("ref", **TINY).to_official_state_dict(), out["ref"])
    VQScoreModel(codebook_size=64, kmeans_init=False).save(out["vq"])
    return out


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [synth.add_noise(synth.speech_like(s, seed=i), snr_db=15.0, seed=i) for i, s in enumerate((2.5, 1.2))]


def _metric_scores(metric, *args) -> torch.Tensor:
    metric.update(*args)
    return metric.compute()["scores"]


@pytest.mark.parametrize("options", [{}, {"chunk_seconds": 1.0}, {"precision": "bf16"}])
def test_scoreq_nr_options(options, files, clips):
    got = F.scoreq_nr(clips, checkpoint=files["nr"], backbone_config=TINY, **options)
    want = _metric_scores(ScoreqNR(checkpoint=files["nr"], backbone_config=TINY, per_utterance=True, **options), clips)
    torch.testing.assert_close(got, want)
    if options:  # the option is really used: the faithful default differs
        assert (got - F.scoreq_nr(clips, checkpoint=files["nr"], backbone_config=TINY)).abs().max() > 1e-6


def test_sha256_pins_the_file_of_every_twin(files, clips):
    digest = hub.sha256sum(files["nr"])
    torch.testing.assert_close(F.scoreq_nr(clips, checkpoint=files["nr"], backbone_config=TINY, sha256=digest),
                               F.scoreq_nr(clips, checkpoint=files["nr"], backbone_config=TINY))
    with pytest.raises(hub.HubError, match="does not match the pinned"):
        F.scoreq_nr(clips, checkpoint=files["nr"], backbone_config=TINY, sha256="0" * 64)
    with pytest.raises(hub.HubError, match="does not match the pinned"):
        F.scoreq_ref(clips, clips, checkpoint=files["ref"], backbone_config=TINY, sha256="0" * 64)
    with pytest.raises(hub.HubError, match="does not match the pinned"):
        F.vqscore(clips, checkpoint=files["vq"], sha256="0" * 64)


def test_scoreq_ref_references_as_the_metric(files, clips, tmp_path):
    refs = [synth.speech_like(1.0, seed=9), synth.speech_like(0.8, seed=10)]
    got = F.scoreq_ref(clips, references=refs, checkpoint=files["ref"], backbone_config=TINY)
    metric = ScoreqRef(references=refs, checkpoint=files["ref"], backbone_config=TINY, per_utterance=True)
    torch.testing.assert_close(got, _metric_scores(metric, clips))
    # the mean distance to the set, by hand
    net = F.get_model("scoreq-ref-natural", files["ref"], chunk_seconds=None, precision="fp32", **TINY)
    x, r = audio.prepare(clips, 16000, 16000), audio.prepare(refs, 16000, 16000)
    by_hand = torch.stack([net.distance(x, [ref] * len(x)) for ref in r], 1).mean(1)
    torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=0)
    # and the full-reference form still pairs preds[b] with target[b]
    paired = F.scoreq_ref(clips, refs, checkpoint=files["ref"], backbone_config=TINY, chunk_seconds=1.0)
    full = ScoreqRef(checkpoint=files["ref"], backbone_config=TINY, chunk_seconds=1.0, per_utterance=True)
    torch.testing.assert_close(paired, _metric_scores(full, clips, refs))


def test_scoreq_ref_says_which_reference_is_missing(files, clips):
    with pytest.raises(ValueError, match="needs clean speech"):
        F.scoreq_ref(clips, checkpoint=files["ref"], backbone_config=TINY)
    with pytest.raises(ValueError, match="not both"):
        F.scoreq_ref(clips, clips, references=clips, checkpoint=files["ref"], backbone_config=TINY)
    with pytest.raises(ValueError, match="target_lengths= was given without a target"):
        F.scoreq_ref(clips, references=clips, target_lengths=[1, 2], checkpoint=files["ref"], backbone_config=TINY)
    with pytest.raises(audio.AudioError, match=r"2 clips in preds but 1 in target; scoreq_ref pairs"):
        F.scoreq_ref(clips, clips[:1], checkpoint=files["ref"], backbone_config=TINY)


def test_vqscore_max_batch_frames(files, clips):
    small = F.vqscore(clips, checkpoint=files["vq"], max_batch_frames=64)
    assert F.get_model("vqscore", files["vq"], max_batch_frames=64).max_batch_frames == 64
    torch.testing.assert_close(small, _metric_scores(VQScore(checkpoint=files["vq"], max_batch_frames=64,
                                                             per_utterance=True), clips))
    torch.testing.assert_close(small, F.vqscore(clips, checkpoint=files["vq"]), atol=1e-6, rtol=0)  # memory only


def test_msr_utmos_needs_a_checkpoint_and_defaults_to_16k():
    import inspect

    assert inspect.signature(F.msr_utmos).parameters["fs"].default == 16000
    with pytest.raises(hub.HubError, match="msr_utmos: MSR-UTMOS has no released weights"):
        F.msr_utmos([torch.zeros(16000)])
