"""ESPnet adapter: a ``wav.scp`` scoring stage and predicted MOS during training.

* Scoring a recipe's ``wav.scp`` (``integrations/espnet/local/score_mos.sh``) lives in
  :mod:`torchmos.adapters.espnet_scp`; its functions are re-exported here
  (:func:`score_scp`, :func:`write_results`, ...), and ``python -m torchmos.adapters.espnet``
  runs its command line.
* :class:`MOSCriterion` is predicted MOS as a validation-only enhancement "criterion";
  :func:`register_criterion` makes it available to ESPnet's enhancement tasks as
  ``torchmos_mos`` (``integrations/espnet/local/enh_train.py`` does it before training).
* :class:`MOSMonitor` is the batch mean for the ``stats`` of a model's ``forward``; for
  GAN-TTS models it is ``stats["generator_predicted_mos"]`` in the generator turn, the
  key ESPnet's VITS and JETS log with ``plot_pred_mos``.

None of them adds the predictor to a model's modules: it is not trained, not in
``state_dict`` (so not in checkpoints) and not in the optimizer.
See docs/integrations/espnet.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from ._scoring import Scorer, missing_extra

try:  # the toolkit first, so that without it this module's import is the one that fails
    import kaldiio  # noqa: F401  (espnet_scp's reader)
    from espnet2.enh.loss.criterions.time_domain import TimeDomainLoss
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("espnet", "espnet (and kaldiio)", _e) from _e

from .espnet_scp import (
    job_device,
    load_entry,
    main,
    merge,
    read_scores,
    read_scp,
    score_scp,
    split_scp,
    summary,
    write_results,
    write_scores,
)

__all__ = [
    "CRITERION_NAME",
    "MOSCriterion",
    "MOSMonitor",
    "job_device",
    "load_entry",
    "main",
    "merge",
    "read_scores",
    "read_scp",
    "register_criterion",
    "score_scp",
    "split_scp",
    "summary",
    "write_results",
    "write_scores",
]

CRITERION_NAME = "torchmos_mos"


class MOSMonitor:
    """Mean predicted MOS of a batch of generated waveforms, for an ESPnet ``stats`` dict.

    ESPnet models report per-batch statistics from ``forward`` (``stats`` in
    ``force_gatherable((loss, stats, weight), device)``); the trainer averages them per
    epoch, separately for ``train`` and ``valid``, and ``--best_model_criterion`` can
    select checkpoints on them. In a GAN-TTS model (``forward(..., forward_generator=True)``
    runs the generator turn, ``False`` the discriminator turn), the generator turn is where
    the waveform is made, and ``generator_predicted_mos`` is the key VITS and JETS use:

        stats["generator_predicted_mos"] = self.mos_monitor(speech_hat_).item()

    The predictor is kept out of the model's modules, so it is not trained, not in
    ``state_dict`` and not in the optimizer; it follows the waveforms' device.

    >>> import torch
    >>> monitor = MOSMonitor("distillmos", fs=16000)
    >>> float(monitor(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000]))) > 1.0
    True
    """

    def __init__(self, model: str = "distillmos", fs: int = 16000, **options: Any) -> None:
        self.scorer = Scorer(model, **options)
        self.fs = int(fs)

    @torch.no_grad()
    def scores(self, wavs: torch.Tensor | Sequence[torch.Tensor], lengths: Any = None) -> torch.Tensor:
        """One score per waveform; ``wavs`` ``(B, T)`` or ``(B, 1, T)`` with sample ``lengths``."""
        if isinstance(wavs, torch.Tensor):
            wavs = wavs.detach()
            if wavs.dim() == 3 and wavs.shape[1] == 1:
                wavs = wavs[:, 0]
        return self.scorer(wavs, self.fs, lengths)

    def __call__(self, wavs: torch.Tensor | Sequence[torch.Tensor], lengths: Any = None) -> torch.Tensor:
        """Mean score of the batch (a 0-dim tensor on the waveforms' device)."""
        return self.scores(wavs, lengths).mean()


class MOSCriterion(TimeDomainLoss):
    """Predicted MOS as an ESPnet enhancement "criterion", evaluated on validation only.

    ESPnet's enhancement task reports every criterion in its ``stats``; with this one
    registered (:func:`register_criterion`) and listed in the config with
    ``wrapper: fixed_order`` and ``wrapper_conf: {weight: 0.0}``, the validation MOS of
    the enhanced speech is logged per epoch and can select checkpoints
    (``best_model_criterion: [[valid, mos, max]]``); it never affects the training loss
    (``only_for_test`` is always true and the weight is 0). The predictor is kept out of
    the module registry, so it is not in the model's ``state_dict``.

    ``forward(ref, inf)`` returns one score per row of ``inf`` (B, T); ``ref`` is used only
    by reference models. ESPnet passes criteria padded batches without lengths; DistillMOS
    is unaffected by trailing zeros on clips shorter than 7.68 s, other models may be.
    """

    def __init__(self, model: str = "distillmos", fs: int = 16000, name: str = "mos", **options: Any) -> None:
        super().__init__(name, only_for_test=True)
        object.__setattr__(self, "monitor", MOSMonitor(model, fs=fs, **options))

    def forward(self, ref: torch.Tensor, inf: torch.Tensor) -> torch.Tensor:
        mon = self.monitor
        refs = ref.detach() if mon.scorer.card.mode == "ref" else None
        return mon.scorer(inf.detach(), mon.fs, refs=refs).to(inf.device)


def register_criterion(name: str = CRITERION_NAME) -> None:
    """Make :class:`MOSCriterion` the enhancement criterion ``name`` (``torchmos_mos``).

    ESPnet builds criteria by name from ``espnet2.tasks.enh.criterion_choices`` (shared by
    the target-speaker task, ``enh_tse``) and has no plug-in hook, so the name must be
    registered in the process that builds the model, before it does:
    ``integrations/espnet/local/enh_train.py`` calls this, then ESPnet's trainer.
    """
    from espnet2.tasks.enh import criterion_choices

    criterion_choices.classes[name.lower()] = MOSCriterion


if __name__ == "__main__":
    sys.exit(main())
