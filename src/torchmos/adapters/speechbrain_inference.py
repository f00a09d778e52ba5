"""A torchmos predictor as a ``speechbrain.inference`` interface: :class:`MOSEstimator`.

Like SpeechBrain's own ``SNREstimator`` or ``EncoderClassifier``::

    from torchmos.adapters.speechbrain import MOSEstimator

    mos = MOSEstimator.from_hparams(source="integrations/speechbrain/pretrained",
                                    savedir="pretrained_models/mos", run_opts={"device": "cpu"})
    mos.estimate_batch(wavs, wav_lens)      # (B,) scores; wav_lens are relative lengths
    mos.estimate_file("speech.wav")         # (1,)

``source`` is a local folder whose ``hyperparams.yaml`` declares the predictor (a
:class:`MOSModel` under ``modules: mos_model``, optionally a ``pretrainer`` that links a
local weight file into ``savedir``), or a torchmos card name (``"distillmos"``). Nothing
is fetched from the HuggingFace hub or a URL: every fetch runs with
``FetchConfig(allow_network=False)``; the card's official weights come from torchmos' own
cache, as for every other torchmos entry point.

Scores equal :mod:`torchmos.functional` on the unpadded clips.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import audio, functional, hub, models
from ._scoring import _to_device, missing_extra, score_with
from .speechbrain_lengths import unpad, unpad_reference

try:
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.inference.interfaces import Pretrained
    from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("speechbrain", "speechbrain", _e) from _e

__all__ = ["MOSEstimator", "MOSModel"]

# what from_hparams(source=<card name>) loads: the folder layout, with no files
_CARD_HPARAMS = """\
sample_rate: {rate}
mos_model: !new:torchmos.adapters.speechbrain_inference.MOSModel
    model: {name}
modules:
    mos_model: !ref <mos_model>
"""


@register_checkpoint_hooks
class MOSModel(nn.Module):
    """A torchmos predictor as a SpeechBrain module (``modules:`` / ``pretrainer:`` in YAML).

    Args:
        model: a torchmos card name.
        checkpoint: a local weight file (official format or torchmos-trained) instead of the
            card's official weights. A ``Pretrainer`` listing this module as a loadable
            supplies one too (its file ``<source>/<loadable>.ckpt``, or ``paths:``).
        sha256: pin the weight file's checksum.
        options: predictor options, e.g. ``precision="bf16"``.

    The weights are loaded on first need (by the pretrainer, :class:`MOSEstimator` or the
    first call), never twice. The network is a private copy, not the shared one of
    :func:`torchmos.functional.get_model`, so moving or freezing it changes nothing else.

    >>> m = MOSModel("distillmos")
    >>> m(torch.randn(1, 16000) * 0.1, fs=16000).shape
    torch.Size([1])
    """

    def __init__(self, model: str = "distillmos", checkpoint: str | os.PathLike | None = None,
                 sha256: str | None = None, **options: Any) -> None:
        super().__init__()
        self.card = hub.get_card(model)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.sha256 = sha256
        self.options = options
        self.net: nn.Module | None = None

    def load(self, checkpoint: str | os.PathLike | None = None) -> MOSModel:
        """Load the weights (``checkpoint``, else the one given at construction, else the card's)."""
        if checkpoint is not None:
            self.checkpoint = os.fspath(checkpoint)
        self.net = models.load(self.card.name, checkpoint=self.checkpoint, sha256=self.sha256, **self.options)
        return self

    def ensure_loaded(self) -> MOSModel:
        return self if self.net is not None else self.load()

    @mark_as_transfer
    def _transfer(self, path: str | os.PathLike) -> None:
        """SpeechBrain's ``Pretrainer`` hook: the collected file is a torchmos weight file."""
        self.load(path)

    def forward(self, wavs: Any, fs: int, lengths: Any = None, refs: Any = None, ref_lengths: Any = None,
                ref_fs: int | None = None, names: Any = None) -> torch.Tensor:
        """Scores (B,) of ``wavs`` at ``fs``, ``lengths`` in samples (as :func:`torchmos.functional.score`)."""
        if self.net is None:  # used on its own, outside MOSEstimator: load next to the input
            self.load().to(functional.device_of(wavs))
        return score_with(self.net, self.card, wavs, fs, lengths, names, refs, ref_lengths, ref_fs)

    def extra_repr(self) -> str:
        return f"model={self.card.name!r}, checkpoint={self.checkpoint!r}"


class MOSEstimator(Pretrained):
    """A "ready-to-use" MOS estimator in the style of ``speechbrain.inference``.

    Build it with :meth:`from_hparams`. ``run_opts={"device": "cuda:0"}`` places it (the
    default is SpeechBrain's guess: an accelerator if there is one); inputs are moved there
    and the scores come back there.

    Example:
        >>> mos = MOSEstimator.from_hparams(source="distillmos", run_opts={"device": "cpu"})
        >>> wavs = torch.randn(2, 16000) * 0.1
        >>> mos.estimate_batch(wavs, torch.tensor([1.0, 0.5])).shape
        torch.Size([2])
    """

    MODULES_NEEDED = ["mos_model"]

    def __init__(self, modules: Any = None, hparams: Any = None, run_opts: Any = None,
                 freeze_params: bool = True) -> None:
        model = (modules or {}).get("mos_model")
        if not isinstance(model, MOSModel):
            raise ValueError(
                "MOSEstimator needs modules: {mos_model: !new:torchmos.adapters.speechbrain_inference.MOSModel}"
                f" in its hyperparams; got {type(model).__name__} for mos_model."
            )
        model.ensure_loaded()  # before Pretrained moves the modules to the device
        hparams = dict(hparams or {})
        hparams["sample_rate"] = audio.check_sample_rate(
            hparams.get("sample_rate") or model.card.sample_rate or 16000, "hparams sample_rate")
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, freeze_params=freeze_params)

    @classmethod
    def from_hparams(cls, source: str | os.PathLike, hparams_file: str = "hyperparams.yaml",
                     savedir: str | os.PathLike | None = None, run_opts: Any = None,
                     overrides: dict[str, Any] | None = None, overrides_must_match: bool = True,
                     local_strategy: LocalStrategy = LocalStrategy.SYMLINK,
                     fetch_config: FetchConfig | None = None, freeze_params: bool = True) -> MOSEstimator:
        """An estimator from a local folder (with ``hyperparams_file``) or a torchmos card name.

        As SpeechBrain's ``Pretrained.from_hparams``: the YAML is linked into ``savedir``
        (``local_strategy``), loaded with ``overrides``, and its ``pretrainer`` (optional
        here) collects and loads its files from ``source``. ``fetch_config`` is honoured
        except that the network is never allowed. For a card name there is nothing to
        fetch (``savedir`` is not used); ``overrides`` apply to ``sample_rate`` and
        ``mos_model``, as for a folder.
        """
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"MOSEstimator.from_hparams: source must be a local folder or a torchmos card "
                            f"name, got {type(source).__name__} (nothing is fetched from a hub or URL).")
        src = os.fspath(source)
        if os.path.isdir(src):
            if not (Path(src) / hparams_file).is_file():
                raise FileNotFoundError(
                    f"MOSEstimator.from_hparams: {Path(src) / hparams_file} does not exist; the folder needs "
                    "a hyperparams file (see integrations/speechbrain/pretrained/hyperparams.yaml).")
            config = dataclasses.replace(fetch_config or FetchConfig(), allow_network=False)
            hparams_path = fetch(filename=hparams_file, source=src, savedir=savedir, save_filename=None,
                                 local_strategy=local_strategy, fetch_config=config)
            with open(hparams_path, encoding="utf-8") as fin:
                hparams = load_hyperpyyaml(fin, overrides or {}, overrides_must_match)
            hparams["savedir"] = savedir
            pretrainer = hparams.get("pretrainer")
            if pretrainer is not None:
                pretrainer.set_collect_in(savedir)
                pretrainer.collect_files(default_source=src, local_strategy=local_strategy, fetch_config=config)
                pretrainer.load_collected()
        elif src in hub.CARDS:
            card = hub.get_card(src)
            text = _CARD_HPARAMS.format(rate=card.sample_rate or 16000, name=card.name)
            hparams = load_hyperpyyaml(text, overrides or {}, overrides_must_match)
        else:
            raise ValueError(
                f"MOSEstimator.from_hparams: source {src!r} is neither a local folder nor a torchmos card "
                f"({', '.join(sorted(hub.CARDS))}); nothing is fetched from the HuggingFace hub or a URL, "
                "so download such a folder first and pass its path."
            )
        return cls(modules=hparams.get("modules"), hparams=hparams, run_opts=run_opts,
                   freeze_params=freeze_params)

    @property
    def model(self) -> str:
        """The torchmos card name."""
        return self.mods.mos_model.card.name

    @property
    def higher_is_better(self) -> bool:
        return self.mods.mos_model.card.higher_is_better

    @property
    def needs_reference(self) -> bool:
        """Whether the model compares each clip with a reference (``refs=``)."""
        return self.mods.mos_model.card.mode == "ref"

    def _check_refs(self, refs: Any) -> None:
        if refs is not None and not self.needs_reference:
            raise ValueError(f"model {self.model!r} is a no-reference predictor; drop refs=.")
        if refs is None and self.needs_reference:
            raise ValueError(f"model {self.model!r} compares each clip with a reference; pass refs= "
                             "(one clean reference per clip).")

    def estimate_batch(self, wavs: Any, wav_lens: Any = None, refs: Any = None,
                       ref_lens: Any = None) -> torch.Tensor:
        """Predicted MOS of a batch, shape ``(B,)``.

        Args:
            wavs: ``(B, T)`` waveforms at ``hparams.sample_rate`` (16 kHz unless the YAML
                says otherwise), zero-padded; ``(B, T, C)`` is mixed down, ``(T,)`` is one clip.
            wav_lens: SpeechBrain relative lengths ``(B,)`` in (0, 1]; ``None`` = no padding.
                The padding is never scored.
            refs, ref_lens: for a reference model, one reference per clip (and its relative
                lengths; by default ``wav_lens``, which needs ``refs`` padded like ``wavs``).
        """
        self._check_refs(refs)
        x, n = unpad(wavs, wav_lens, arg="wavs", lens_arg="wav_lens")
        r, rn = (None, None) if refs is None else unpad_reference(
            refs, ref_lens, wavs, wav_lens, arg="refs", lens_arg="ref_lens", pred_lens_arg="wav_lens")
        x, r = _to_device(x, self.device), _to_device(r, self.device)
        with torch.no_grad():
            return self.mods.mos_model(x, self.hparams.sample_rate, n, refs=r, ref_lengths=rn)

    def estimate_file(self, path: str | os.PathLike, ref_path: str | os.PathLike | None = None) -> torch.Tensor:
        """Predicted MOS of one local audio file, shape ``(1,)`` (a batch of one, as
        ``classify_file`` returns). The file is read at its own rate and resampled as
        :mod:`torchmos.functional` does; ``ref_path`` is the reference for a reference model."""
        self._check_refs(ref_path)
        wav, fs = audio.read(path)
        ref, ref_fs = (None, None) if ref_path is None else audio.read(ref_path)
        with torch.no_grad():
            return self.mods.mos_model([wav.to(self.device)], fs, refs=_to_device(
                None if ref is None else [ref], self.device), ref_fs=ref_fs, names=[os.fspath(path)])

    def load_audio(self, path: str | os.PathLike, savedir: Any = None) -> torch.Tensor:
        """A local file as a mono waveform at ``hparams.sample_rate``, on the estimator's
        device: SpeechBrain's ``load_audio`` without its hub and URL fetching."""
        wav, _ = audio.read(path, target_fs=self.hparams.sample_rate)
        return wav.to(self.device)

    def forward(self, wavs: Any, wav_lens: Any = None, refs: Any = None, ref_lens: Any = None) -> torch.Tensor:
        """:meth:`estimate_batch` (SpeechBrain's convention for ``forward``)."""
        return self.estimate_batch(wavs, wav_lens, refs, ref_lens)
