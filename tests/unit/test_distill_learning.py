"""The learning test of `torchmos train distill` (issue 14): a half-width DistillMOS
student distilled from the official DistillMOS on generated speech-like audio agrees with
its teacher on held-out degraded clips (Spearman >= 0.9).

Slow (minutes on 2 cores: every training clip is a 7.68 s crop through the student's CNN),
so it runs in the slow lane (`pytest -m slow`).
"""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from torchmos import audio, cli, synth
from torchmos.models.distillmos import DistillMOSModel, size_config
from torchmos.training import pearson, spearman
from torchmos.training.distill_data import Items, make_items

STEPS = 360
SECONDS = 7.5  # DistillMOS' crop: longer clips average the teacher's reaction to the content


@pytest.fixture(autouse=True)
def _home(tmp_home):
    """No network, no user cache."""


@pytest.mark.slow
def test_half_width_student_ranks_held_out_clips_as_its_teacher(tmp_path):
    # Many files in few versions (benchmarks/bench_distill_learning.py compares data
    # shapes): the teacher's scores of generated speech depend on the clip as much as on
    # the degradation, and a student trained on few files fits them without generalising.
    torch.set_num_threads(2)
    train, held, test = tmp_path / "train", tmp_path / "held", tmp_path / "test"
    for folder, n, seed in ((train, 96, 0), (held, 6, 50_000), (test, 16, 60_000)):
        folder.mkdir()
        for i in range(n):
            sf.write(str(folder / f"c{i:02d}.wav"), synth.speech_like(SECONDS, 16000, seed=seed + i).numpy(), 16000)
    out = tmp_path / "run"
    assert cli.main(["train", "distill", "--audio", str(train), "--valid", str(held), "--out", str(out),
                     "--teacher", "distillmos", "--width", "0.5", "--depth", "0.5", "--steps", str(STEPS),
                     "--batch-size", "8", "--variants", "3", "--valid-variants", "4",
                     "--val-every", "0", "--seed", "5", "--no-progress"]) == 0
    student = DistillMOSModel.from_pretrained(checkpoint=out / "student.pt")
    assert student.size == size_config(0.5, 0.5)
    # held-out files, degraded independently of the run (other seed, all kinds)
    entries = audio.find_audio([str(test)])
    items = Items(entries, [])
    items.items = make_items(items.ids, [SECONDS] * len(entries), 4, seed=99, crop_seconds=7.68,
                             kinds=list(synth.KINDS), clean_fraction=0.1, stream="test")
    clips = [items.load(i) for i in range(len(items))]
    teacher = DistillMOSModel.from_pretrained()
    t, s = teacher(clips), student(clips)
    assert float(t.max() - t.min()) > 1.0  # the degradations spread the teacher's scores
    rho, r = spearman(s, t), pearson(s, t)
    print(f"held-out agreement with the teacher: Spearman {rho:.4f}, Pearson {r:.4f} over {len(clips)} clips")
    assert rho >= 0.9, (rho, r)
