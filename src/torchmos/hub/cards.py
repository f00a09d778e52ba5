"""Model cards: a predictor's weights and the facts that go with them, and the registry.

A :class:`ModelCard` carries a predictor's weights *and* the facts a caller must not get
wrong (native sample rate, mode, score range, licence, citation), in the spirit of
torchaudio's pipeline bundles. A new predictor registers its card here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CARDS", "ModelCard", "WeightFile", "get_card", "list_cards", "register"]


@dataclass(frozen=True)
class WeightFile:
    """One weight file: where it can come from and how to check it."""

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None  # None: no published checksum; trust on first use
    size: int | None = None
    package: tuple[str, str] | None = None  # (distribution, path inside it)


@dataclass(frozen=True)
class ModelCard:
    """A predictor: its weights and the facts that go with them."""

    name: str
    family: str
    title: str
    summary: str
    weights: WeightFile | None
    sample_rate: int  # the model's rate; 0: native rate, never resampled (MSR-UTMOS)
    mode: str = "nr"  # "nr" (no reference) or "ref" (needs a reference)
    domain: str = "natural"
    higher_is_better: bool = True
    score_range: tuple[float, float] = (1.0, 5.0)
    min_seconds: float = 0.1
    licence: str = ""
    citation: str = ""
    homepage: str = ""
    options: dict[str, Any] = field(default_factory=dict)


CARDS: dict[str, ModelCard] = {}


def register(card: ModelCard) -> ModelCard:
    """Add a card to the registry (a new predictor registers here)."""
    CARDS[card.name] = card
    return card


def get_card(name: str | ModelCard) -> ModelCard:
    """The card called ``name``; a clear error lists the known names otherwise."""
    if isinstance(name, ModelCard):
        return name
    try:
        return CARDS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(CARDS))}") from None


def list_cards() -> list[ModelCard]:
    return [CARDS[k] for k in sorted(CARDS)]


# ----------------------------------------------------------------------------- cards
#
# Fields left out take ModelCard's defaults: no-reference (mode "nr"), natural speech,
# higher is better, MOS in [1, 5], at least 0.1 s of audio.

_DISTILLMOS_CITATION = (
    "B. Stahl and H. Gamper, \"Distillation and Pruning for Scalable Self-Supervised "
    "Representation-Based Speech Quality Assessment,\" ICASSP 2025."
)

register(
    ModelCard(
        name="distillmos",
        family="distillmos",
        title="DistillMOS (Microsoft), no-reference MOS, 4.1 M parameters",
        summary="No-reference MOS of natural speech (noise suppression, codecs, packet loss), "
        "distilled from an XLS-R teacher. Weak on TTS.",
        weights=WeightFile(
            filename="distill_mos_v7.pt",
            sha256="b18b3ac60227267cfb91e5d00ce22cc7b73716fd92f269484da1446e27031a40",
            size=16907522,
            package=("distillmos", "distillmos/weights/distill_mos_v7.pt"),
        ),
        sample_rate=16000,
        licence="MIT (weights and code of the distillmos package)",
        citation=_DISTILLMOS_CITATION,
        homepage="https://github.com/microsoft/Distill-MOS",
    )
)

_SCOREQ_CITATION = (
    "A. Ragano, J. Skoglund and A. Hines, \"SCOREQ: Speech Quality Assessment with "
    "Contrastive Regression,\" NeurIPS 2024."
)
_SCOREQ_ZENODO = "https://zenodo.org/records/13860326/files/{}.pt"
for _mode, _domain, _file, _summary in [
    ("nr", "natural", "adapt_nr_telephone",
     "No-reference MOS of natural speech (codecs, VoIP, enhancement); trained on NISQA TRAIN SIM."),
    ("ref", "natural", "fixed_nmr_telephone",
     "Distance in [0, 2] to a clean reference (full or non-matching); natural speech. Lower is better."),
    ("nr", "synthetic", "adapt_nr_synthetic",
     "No-reference MOS of synthetic speech (TTS, voice conversion); trained on VoiceMOS 2022."),
    ("ref", "synthetic", "fixed_nmr_synthetic",
     "Distance in [0, 2] to a clean reference (full or non-matching); synthetic speech. Lower is better."),
]:
    register(
        ModelCard(
            name=f"scoreq-{_mode}-{_domain}",
            family="scoreq",
            title=f"SCOREQ {'no-reference MOS' if _mode == 'nr' else 'reference distance'}, {_domain} speech",
            summary=_summary,
            weights=WeightFile(filename=f"{_file}.pt", urls=(_SCOREQ_ZENODO.format(_file),)),
            sample_rate=16000,
            mode=_mode,
            domain=_domain,
            higher_is_better=_mode == "nr",
            score_range=(1.0, 5.0) if _mode == "nr" else (0.0, 2.0),
            licence="code: MIT (alessandroragano/scoreq); weights: Zenodo record 13860326 (check its licence)",
            citation=_SCOREQ_CITATION,
            homepage="https://github.com/alessandroragano/scoreq",
            options={"mode": _mode},
        )
    )

register(
    ModelCard(
        name="vqscore",
        family="vqscore",
        title="VQScore, self-supervised quality from a VQ-VAE trained on clean speech",
        summary="Cosine fit of a clean-speech VQ-VAE codebook to the clip's encoding; "
        "higher is better, roughly in [0, 1]. Trainable on your own clean speech.",
        weights=WeightFile(
            filename="checkpoint-dnsmos_ovr_CC=0.835.pkl",
            urls=(
                "https://raw.githubusercontent.com/JasonSWFu/VQscore/main/exp/"
                "QE_cbook_size_2048_1_32_IN_input_encoder_z_Librispeech_clean_github/"
                "checkpoint-dnsmos_ovr_CC%3D0.835.pkl",
            ),
        ),
        sample_rate=16000,
        score_range=(0.0, 1.0),
        licence="no licence file in the authors' repository (JasonSWFu/VQscore); ask the authors before redistribution",
        citation="S.-W. Fu, K.-H. Hung, Y. Tsao and Y.-C. F. Wang, \"Self-Supervised Speech Quality "
        "Estimation and Enhancement Using Only Clean Speech,\" ICLR 2024.",
        homepage="https://github.com/JasonSWFu/VQscore",
    )
)

_MSR_UTMOS_CITATION = (
    "G. Nishikawa, W. Nakata, Y. Saito, K. Imamura, H. Saruwatari and T. Nakamura, "
    "\"Multi-Sampling-Frequency Naturalness MOS Prediction Using Self-Supervised Learning Model "
    "with Sampling-Frequency-Independent Layer,\" AudioMOS Challenge 2025 (ASRU 2025 workshop), "
    "arXiv:2507.14647. SFI convolution: K. Saito, T. Nakamura, K. Yatabe and H. Saruwatari, "
    "\"Sampling-Frequency-Independent Convolutional Layer and its Application to Audio Source "
    "Separation,\" IEEE/ACM TASLP 30, 2022."
)

register(
    ModelCard(
        name="msr-utmos",
        family="msr-utmos",
        title="MSR-UTMOS, naturalness MOS at the clip's own sampling frequency (8-48 kHz)",
        summary="No-reference naturalness MOS (TTS, VC, natural speech) at the native rate, no "
        "resampling: an SSL model with a sampling-frequency-independent first layer and a UTMOS-style "
        "head. No released weights: train with `torchmos train sfi-distill` and `torchmos train "
        "msr-utmos`, or convert the authors' Lightning checkpoint.",
        weights=None,
        sample_rate=0,  # native: any rate, never resampled
        domain="synthetic",
        licence="MIT (the authors' code, sarulab-speech/msr-utmos); weights: those you train or convert",
        citation=_MSR_UTMOS_CITATION,
        homepage="https://github.com/sarulab-speech/msr-utmos",
    )
)
