"""torchmos predictors as VERSA metrics: ``BaseMetric`` subclasses and their registration.

VERSA (https://github.com/wavlab-speech/versa) defines a metric as a subclass of
``versa.definition.BaseMetric`` (``_setup``, ``compute(predictions, references, metadata)``,
``get_metadata()``) that a ``register_<name>_metric(registry)`` function adds to a
``MetricRegistry``. Its scorer fills the registry from the ``register_*_metric`` functions
in the ``versa`` package namespace only, so :func:`register_with_versa` puts
:func:`register_torchmos_metric` there; ``python -m torchmos.adapters.versa`` does that and
then runs VERSA's own scorer. Written against, and run with, VERSA commit c398480a4f3c
(2026-05-19); see docs/integrations/versa.md.

Registry names (YAML ``name:``), the torchmos card each scores with, and its output key
(VERSA's key where VERSA has a metric of the same model):

* ``torchmos_distillmos``: distillmos -> ``distillmos``
* ``torchmos_msr_utmos``: msr-utmos, needs ``checkpoint:`` -> ``msr_utmos``
* ``torchmos_vqscore``: vqscore -> ``vqscore``
* ``torchmos_scoreq_nr`` (alias ``torchmos_scoreq``): scoreq-nr-<data_domain> -> ``scoreq_nr``
* ``torchmos_scoreq_ref``: scoreq-ref-<data_domain>, needs ``--gt`` -> ``scoreq_ref``
* ``torchmos_scoreq_nr_natural``, ``torchmos_scoreq_nr_synthetic``,
  ``torchmos_scoreq_ref_natural``, ``torchmos_scoreq_ref_synthetic``: that card ->
  ``scoreq_nr`` / ``scoreq_ref``
* ``torchmos``: the card named by ``model:`` (default distillmos) -> that card's key

``data_domain`` defaults to ``synthetic``, as for VERSA's own ``scoreq_nr`` / ``scoreq_ref``
(torchmos' own SCOREQ default is ``natural``). Options of every entry: ``key`` (rename the
output key), ``checkpoint``, ``sha256`` and ``options`` (a mapping of predictor options,
e.g. ``{precision: bf16}``); the CLI's ``--use_gpu`` runs it on CUDA. Scores equal
:mod:`torchmos.functional`'s for the audio VERSA hands over: VERSA reads each file, keeps
its first channel and, when a prediction and its reference differ in rate, resamples the
higher one (with scipy) before any metric sees them; torchmos resamples the rest itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ... import hub
from .._scoring import Scorer
from .legacy import missing_versa, mono

try:
    from versa.definition import BaseMetric, MetricCategory, MetricMetadata, MetricType
except ImportError as e:  # VERSA is installed from its source only
    raise missing_versa(e) from e

__all__ = [
    "TorchmosMetric", "TorchmosMetricMetadata", "metric_classes", "register_torchmos_metric",
    "register_torchmos_scoreq_metric", "register_with_versa", "versa_key",
    "register_torchmos_distillmos_metric", "register_torchmos_msr_utmos_metric",
    "register_torchmos_scoreq_nr_natural_metric", "register_torchmos_scoreq_nr_synthetic_metric",
    "register_torchmos_scoreq_ref_natural_metric", "register_torchmos_scoreq_ref_synthetic_metric",
    "register_torchmos_vqscore_metric",
]

VERSA_DOMAIN = "synthetic"  # VERSA's default data_domain for SCOREQ
DOMAINS = ("natural", "synthetic")
COMMON_OPTIONS = frozenset({"key", "checkpoint", "sha256", "options"})
VERSA_OPTIONS = frozenset({"name", "use_gpu"})  # put in every metric's config by VERSA's scorer

# keys VERSA's own metrics use for the same models; other cards: the card name with "_"
_VERSA_KEYS = {"scoreq-nr": "scoreq_nr", "scoreq-ref": "scoreq_ref"}


def versa_key(card: str | hub.ModelCard) -> str:
    """The output key of a card in VERSA's naming: ``scoreq_nr`` for both SCOREQ
    no-reference cards (as VERSA's ``scoreq_nr`` whatever its domain), ``scoreq_ref`` for
    the reference ones, otherwise the card name with ``_`` (``msr_utmos``)."""
    name = hub.get_card(card).name
    for prefix, key in _VERSA_KEYS.items():
        if name.startswith(prefix + "-"):
            return key
    return name.replace("-", "_")


@dataclass
class TorchmosMetricMetadata(MetricMetadata):
    """VERSA's ``MetricMetadata`` plus what a torchmos card adds.

    ``sample_rate`` is the rate the predictor scores at (input at any rate is resampled to
    it; 0: the clip's own rate, no resampling); ``None`` where it depends on the YAML."""

    card: str | None = None
    sample_rate: int | None = None
    output_key: str | None = None
    higher_is_better: bool | None = None


def _metadata(name: str, card: hub.ModelCard | None, key: str | None, note: str = "") -> TorchmosMetricMetadata:
    ref = card is not None and card.mode == "ref"
    if card is None:
        description = "a torchmos predictor chosen by the YAML option model: (a card name; default distillmos)"
    else:
        rate = "at the clip's own rate" if card.sample_rate == 0 else f"at {card.sample_rate} Hz"
        description = f"{card.title} (torchmos card {card.name!r}, scored {rate}){note}"
    return TorchmosMetricMetadata(
        name=name,
        category=MetricCategory.DEPENDENT if ref else MetricCategory.INDEPENDENT,
        metric_type=MetricType.FLOAT,
        requires_reference=ref,
        requires_text=False,
        gpu_compatible=True,
        auto_install=False,
        dependencies=["torchmos", "torch", "numpy"],
        description=description,
        paper_reference=card.citation if card else None,
        implementation_source=card.homepage if card else None,
        card=card.name if card else None,
        sample_rate=card.sample_rate if card else None,
        output_key=key,
        higher_is_better=card.higher_is_better if card else None,
    )


class TorchmosMetric(BaseMetric):
    """A torchmos predictor as a VERSA metric; scores equal :mod:`torchmos.functional`'s.

    ``config`` is the YAML entry (VERSA adds ``use_gpu``). This class is the generic
    ``torchmos`` entry (``model:`` picks the card); its subclasses fix the card
    (``torchmos_distillmos``, ...) or take a SCOREQ ``data_domain``. The model is loaded
    in ``_setup``, once per metric, as VERSA's own metrics do.

    ``compute`` takes one utterance as VERSA hands it over: a numpy array, 1-D (a 2-D
    ``(time, channel)`` one is averaged over channels), float in [-1, 1] or integer PCM;
    its rate is ``metadata["sample_rate"]`` (16000 when absent, VERSA's convention); a
    reference model needs ``references`` (same rate). Returns ``{output key: score}``.

    >>> m = TorchmosMetric({"model": "distillmos"})
    >>> import numpy as np
    >>> sorted(m.compute(np.random.default_rng(0).normal(0, 0.1, 8000), metadata={"sample_rate": 8000}))
    ['distillmos']
    """

    registry_name: ClassVar[str] = "torchmos"
    fixed_card: ClassVar[str | None] = None  # the card, when the entry fixes it
    domain_family: ClassVar[str | None] = None  # "scoreq-nr": the card is scoreq-nr-<data_domain>
    aliases: ClassVar[tuple[str, ...]] = ()

    def _setup(self) -> None:
        self.card, self.key, kwargs = self.resolve(self.config)
        self.device = "cuda" if self.config.get("use_gpu") else "cpu"
        self.scorer = Scorer(self.card.name, device=self.device, **kwargs)
        self.scorer.network(self.device)  # load now, not on the first utterance

    @classmethod
    def allowed_options(cls) -> frozenset[str]:
        """The YAML options this entry takes (besides VERSA's ``name`` and ``use_gpu``)."""
        if cls.domain_family is not None:
            return COMMON_OPTIONS | {"data_domain"}
        return COMMON_OPTIONS | ({"model"} if cls.fixed_card is None else set())

    @classmethod
    def resolve(cls, config: Mapping[str, Any] | None) -> tuple[hub.ModelCard, str, dict[str, Any]]:
        """Check a YAML entry without loading anything: ``(card, output key, Scorer options)``.

        Raises ValueError naming the entry and the option at fault."""
        config = dict(config or {})
        where = f"VERSA metric {config.get('name', cls.registry_name)!r}"
        allowed = cls.allowed_options()
        unknown = sorted(set(config) - allowed - VERSA_OPTIONS)
        if unknown:
            hint = ("; torchmos keeps weights in $TORCHMOS_HOME (default ~/.cache/torchmos): set that variable "
                    "to choose the folder" if {"cache_dir", "model_cache"} & set(unknown) else "")
            raise ValueError(f"{where}: unknown option(s) {unknown}; it takes {sorted(allowed)}{hint}.")
        if cls.fixed_card is not None:
            card_name = cls.fixed_card
        elif cls.domain_family is not None:
            domain = config.get("data_domain", VERSA_DOMAIN)
            if domain not in DOMAINS:
                raise ValueError(f"{where}: data_domain must be one of {list(DOMAINS)}, got {domain!r}.")
            card_name = f"{cls.domain_family}-{domain}"
        else:
            card_name = config.get("model", "distillmos")
        try:
            card = hub.get_card(card_name)
        except KeyError as e:
            raise ValueError(f"{where}: {e.args[0]}") from None
        key = config.get("key", versa_key(card))
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: key must be a non-empty string, got {key!r}.")
        options = config.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"{where}: options must be a mapping (e.g. {{precision: bf16}}), got {options!r}.")
        kwargs = {"checkpoint": config.get("checkpoint"), "sha256": config.get("sha256"), **options}
        return card, key, kwargs

    def compute(self, predictions: Any, references: Any = None,
                metadata: dict[str, Any] | None = None) -> dict[str, float]:
        metadata = metadata or {}
        utt = str(metadata.get("key", "utterance"))
        if predictions is None:
            raise ValueError(f"{self.registry_name}: no predicted signal for {utt}.")
        fs = metadata.get("sample_rate", 16000)
        refs = None
        if self.card.mode == "ref":
            if references is None:
                raise ValueError(f"{self.registry_name} ({self.card.name}) compares each utterance with "
                                 f"its reference; none for {utt} (run VERSA's scorer with --gt).")
            refs = [mono(references, f"{utt} (reference)")]
        score = self.scorer([mono(predictions, utt)], fs, names=[utt], refs=refs)
        return {self.key: float(score.reshape(-1)[0])}

    def get_metadata(self) -> TorchmosMetricMetadata:
        return _metadata(self.registry_name, self.card, self.key)

    @classmethod
    def registered_metadata(cls) -> TorchmosMetricMetadata:
        """The metadata registered for the entry (the default card where the YAML picks it)."""
        if cls.fixed_card is None and cls.domain_family is None:
            return _metadata(cls.registry_name, None, None)
        card, key, _ = cls.resolve({})
        note = f"; data_domain picks {cls.domain_family}-natural or -synthetic" if cls.domain_family else ""
        return _metadata(cls.registry_name, card, key, note)


def _subclass(name: str, card: str | None = None, family: str | None = None,
              aliases: tuple[str, ...] = ()) -> type[TorchmosMetric]:
    what = f"card {card!r}" if card else f"card {family}-<data_domain> (default {VERSA_DOMAIN})"
    cls_name = "Torchmos" + "".join(p.capitalize() for p in name.split("_")[1:]) + "Metric"
    return type(cls_name, (TorchmosMetric,), {
        "__doc__": f"The VERSA metric ``{name}``: torchmos {what}; see :class:`TorchmosMetric`.",
        "__module__": __name__, "registry_name": name, "fixed_card": card, "domain_family": family,
        "aliases": aliases,
    })


def _card_entry(card: str) -> type[TorchmosMetric]:
    return _subclass("torchmos_" + card.replace("-", "_"), card=card)


TorchmosScoreqNrMetric = _subclass("torchmos_scoreq_nr", family="scoreq-nr", aliases=("torchmos_scoreq",))
TorchmosScoreqRefMetric = _subclass("torchmos_scoreq_ref", family="scoreq-ref")
TorchmosDistillmosMetric = _card_entry("distillmos")
TorchmosMsrUtmosMetric = _card_entry("msr-utmos")
TorchmosVqscoreMetric = _card_entry("vqscore")
TorchmosScoreqNrNaturalMetric = _card_entry("scoreq-nr-natural")
TorchmosScoreqNrSyntheticMetric = _card_entry("scoreq-nr-synthetic")
TorchmosScoreqRefNaturalMetric = _card_entry("scoreq-ref-natural")
TorchmosScoreqRefSyntheticMetric = _card_entry("scoreq-ref-synthetic")

_CARD_CLASSES = {c.fixed_card: c for c in (
    TorchmosDistillmosMetric, TorchmosMsrUtmosMetric, TorchmosVqscoreMetric, TorchmosScoreqNrNaturalMetric,
    TorchmosScoreqNrSyntheticMetric, TorchmosScoreqRefNaturalMetric, TorchmosScoreqRefSyntheticMetric)}


def metric_classes() -> dict[str, type[TorchmosMetric]]:
    """Every torchmos VERSA metric class by registry name."""
    classes = [TorchmosMetric, TorchmosScoreqNrMetric, TorchmosScoreqRefMetric, *_CARD_CLASSES.values()]
    return {c.registry_name: c for c in classes}


def _register(registry: Any, cls: type[TorchmosMetric]) -> None:
    registry.register(cls, cls.registered_metadata(), aliases=list(cls.aliases))


def _card_registrar(card: str) -> Callable[[Any], None]:
    cls = _CARD_CLASSES[card]

    def register(registry: Any) -> None:
        _register(registry, cls)

    register.__name__ = register.__qualname__ = f"register_{cls.registry_name}_metric"
    register.__doc__ = f"Register ``{cls.registry_name}`` (torchmos card {card!r}) in a VERSA ``MetricRegistry``."
    return register


register_torchmos_distillmos_metric = _card_registrar("distillmos")
register_torchmos_msr_utmos_metric = _card_registrar("msr-utmos")
register_torchmos_vqscore_metric = _card_registrar("vqscore")
register_torchmos_scoreq_nr_natural_metric = _card_registrar("scoreq-nr-natural")
register_torchmos_scoreq_nr_synthetic_metric = _card_registrar("scoreq-nr-synthetic")
register_torchmos_scoreq_ref_natural_metric = _card_registrar("scoreq-ref-natural")
register_torchmos_scoreq_ref_synthetic_metric = _card_registrar("scoreq-ref-synthetic")


def register_torchmos_scoreq_metric(registry: Any) -> None:
    """Register ``torchmos_scoreq_nr`` (alias ``torchmos_scoreq``) and ``torchmos_scoreq_ref``,
    which take VERSA's ``data_domain`` option (default ``synthetic``), as VERSA's
    ``register_scoreq_metric`` does for its own ``scoreq_nr`` / ``scoreq_ref``."""
    _register(registry, TorchmosScoreqNrMetric)
    _register(registry, TorchmosScoreqRefMetric)


def register_torchmos_metric(registry: Any) -> None:
    """Register every torchmos VERSA metric (the names in :func:`metric_classes`).

    >>> from versa.definition import MetricRegistry
    >>> r = MetricRegistry()
    >>> register_torchmos_metric(r)
    >>> r.get_metadata("torchmos_scoreq_ref").requires_reference
    True
    """
    for cls in metric_classes().values():
        _register(registry, cls)


def register_with_versa() -> None:
    """Make VERSA's scorer find the torchmos metrics.

    ``VersaScorer()`` builds its registry by calling every ``register_*_metric`` function
    in the ``versa`` package namespace; this adds :func:`register_torchmos_metric` there.
    Call it before creating the scorer (``python -m torchmos.adapters.versa`` does)."""
    import versa

    versa.register_torchmos_metric = register_torchmos_metric
