"""Teachers and students of ``torchmos train distill``.

* The teacher: any no-reference torchmos predictor (a model name, optionally with a
  weight file, or a weight file alone), frozen; its identity for the score cache is its
  name and the sha256 of its weights.
* :class:`DistillMOSStudent`: the DistillMOS architecture at a size of
  :func:`torchmos.models.distillmos.size_config`, trained on 7.68 s crops (shorter clips
  zero-padded at the end, as the model pads them when scoring); saved in the official
  checkpoint layout, with its size.
* :class:`ScoreqStudent`: a SCOREQ-style wav2vec 2.0 no-reference predictor, pruned
  (:mod:`torchmos.models.scoreq_prune`) and fine-tuned; saved in SCOREQ's official layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import hub, models
from ..hub.integrity import sha256sum
from ..models.distillmos import SEQ_LEN, DistillMOSModel, size_config
from . import TrainError

__all__ = ["DistillMOSStudent", "ScoreqStudent", "Teacher", "load_teacher"]

DEFAULT_TEACHERS = ("scoreq-nr-natural", "distillmos")


class Teacher:
    """A frozen no-reference predictor scoring 16 kHz clips; ``identity`` names it and its
    weights (for the score cache)."""

    def __init__(self, name: str, checkpoint: str | None = None) -> None:
        card = hub.get_card(name)
        if card.mode != "nr":
            raise TrainError(f"--teacher {name}: a reference-mode model cannot score unlabelled clips alone; "
                             "use a no-reference model.")
        self.card, self.checkpoint = card, checkpoint
        path = hub.resolve(card.name, checkpoint=checkpoint)
        self.weights = Path(path)
        self.identity = f"{card.name}:{sha256sum(path)}"
        self.net = models.load(card.name, checkpoint=path).eval().requires_grad_(False)

    def to(self, device: torch.device) -> Teacher:
        self.net.to(device)
        return self

    @torch.no_grad()
    def __call__(self, clips: Sequence[Tensor]) -> Tensor:
        from ..functional._core import score

        dev = next(self.net.parameters()).device
        return score(self.net, self.card, [c.to(dev) for c in clips], 16000).float()


def load_teacher(name: str, checkpoint: str | None = None) -> Teacher:
    """``--teacher`` (``auto``: SCOREQ NR natural when its weights are here, else
    DistillMOS; a model name; or a weight file) and ``--teacher-checkpoint``."""
    if name == "auto":
        if checkpoint:
            raise TrainError("--teacher-checkpoint needs --teacher MODEL (which model the file is for).")
        name = next(n for n in DEFAULT_TEACHERS if hub.local_file(n) is not None or n == DEFAULT_TEACHERS[-1])
    elif os.path.isfile(name):
        checkpoint, name = name, models.identify(name)
    try:
        return Teacher(name, checkpoint)
    except KeyError as e:
        raise TrainError(f"--teacher {name}: {e.args[0]}") from None
    except hub.HubError as e:
        raise TrainError(f"--teacher {name}: {e}") from None


class DistillMOSStudent(nn.Module):
    """A DistillMOS network being trained: clips -> MOS (with gradients)."""

    kind = "distillmos"

    def __init__(self, net: DistillMOSModel) -> None:
        super().__init__()
        self.net = net

    @classmethod
    def create(cls, width: float, depth: float, layers: int | None, heads: int, init: str | None) -> DistillMOSStudent:
        if init:
            net = DistillMOSModel.from_pretrained(checkpoint=init)
            want = size_config(width, depth, layers, heads)
            if net.size != want:
                raise TrainError(f"--student-init {init}: a network of size {net.size}, but --width/--depth/--layers "
                                 f"ask for {want}.")
            return cls(net)
        try:
            return cls(DistillMOSModel(**size_config(width, depth, layers, heads)))
        except ValueError as e:
            raise TrainError(f"student size: {e}") from None

    def set_mode(self, train: bool) -> None:
        # DistillMOSModel stays in eval mode for inference; training needs BatchNorm's batch statistics
        nn.Module.train(self.net, train)

    def forward(self, clips: Sequence[Tensor]) -> Tensor:
        dev = self.net.device
        x = torch.stack([nn.functional.pad(c[:SEQ_LEN].float(), (0, max(0, SEQ_LEN - c.shape[0]))) for c in clips])
        return self.net.score_crops(x.to(dev))

    def inference(self) -> nn.Module:
        return self.net

    def for_inference(self, clips: Sequence[Tensor], batch: int) -> DistillMOSStudent:
        """An eval-mode copy whose BatchNorm statistics are those of the current weights:
        the mean and variance over ``clips`` (in batches of ``batch``), in place of the
        running averages, which lag behind weights that change fast (BN recalibration).
        The student itself is left as it is."""
        copy = DistillMOSStudent(DistillMOSModel(**self.net.size)).to(self.net.device)
        copy.load_state_dict(self.state_dict())
        norms = [m for m in copy.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if clips:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches
            copy.set_mode(True)
            with torch.no_grad():
                for i in range(0, len(clips), batch):
                    if len(clips[i:i + batch]) > 1:
                        copy(clips[i:i + batch])
            for m in norms:
                m.momentum = 0.1
        copy.set_mode(False)
        return copy

    def save(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        hub.save_atomic(self.net.official_checkpoint(
            torchmos={"family": "distillmos", "card": "distillmos", **meta}), path)


class ScoreqStudent(nn.Module):
    """A (pruned) SCOREQ NR network being fine-tuned: clips -> MOS (with gradients)."""

    kind = "pruned-scoreq"

    def __init__(self, net: nn.Module, train_cnn: bool = False) -> None:
        super().__init__()
        self.net, self.train_cnn = net, train_cnn
        if not train_cnn:
            net.backbone.feature_extractor.requires_grad_(False)
        if getattr(net.backbone, "masked_spec_embed", None) is not None:
            net.backbone.masked_spec_embed.requires_grad_(False)  # SpecAugment's: unused
        net.backbone.config.apply_spec_augment = False
        net.embedding_layer.requires_grad_(False)  # the contrastive head: not used for MOS

    @classmethod
    def create(cls, init: str, keep_layers: int | None, keep_heads: int | None, train_cnn: bool) -> ScoreqStudent:
        from ..models.scoreq import ScoreqModel
        from ..models.scoreq_prune import keep_layers as prune_layers
        from ..models.scoreq_prune import prune_heads

        try:
            net = ScoreqModel.from_pretrained(checkpoint=init, mode="nr")
        except (ValueError, hub.HubError) as e:
            raise TrainError(f"--student-init {init}: not a SCOREQ no-reference file ({e}).") from None
        try:
            if keep_layers is not None:
                prune_layers(net, keep_layers)
            if keep_heads is not None:
                prune_heads(net, keep_heads)
        except ValueError as e:
            raise TrainError(str(e)) from None
        return cls(net, train_cnn)

    def set_mode(self, train: bool) -> None:
        self.net.train(train)

    def forward(self, clips: Sequence[Tensor]) -> Tensor:
        dev = self.net.device
        emb = nn.functional.normalize(self.net.train_pooled([c.to(dev) for c in clips], self.train_cnn), dim=1)
        return self.net.mos_layer(emb).squeeze(-1)

    def inference(self) -> nn.Module:
        return self.net

    def for_inference(self, clips: Sequence[Tensor], batch: int) -> ScoreqStudent:
        """Itself (no batch statistics to recalibrate)."""
        return self

    def save(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        hub.save_atomic(self.net.to_official_state_dict(), path)  # the official layout: no extras


def scoreq_init(init: str | None, teacher: Teacher) -> str:
    """The file a pruned SCOREQ student starts from: ``--student-init``, else the teacher's
    weights when the teacher is a SCOREQ NR model."""
    if init:
        return init
    if teacher.card.family == "scoreq":
        return str(teacher.weights)
    raise TrainError("--student pruned-scoreq starts from SCOREQ NR weights: pass --student-init FILE (an "
                     "official-layout SCOREQ NR file), or use a SCOREQ NR teacher whose weights are here.")
