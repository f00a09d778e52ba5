"""torchmos in VERSA (torchmos.adapters.versa): the same scores as torchmos.functional.

VERSA is not on PyPI. Where it is importable (installed from its source, as
docs/integrations/versa.md shows) these tests use the real one: its ``MetricRegistry`` and
``MetricFactory``, the registry its ``VersaScorer`` builds, and its scorer run end to end
by ``python -m torchmos.adapters.versa``. Where it is not, the metric tests run against
``_stand_in_versa()`` below: a STAND-IN, written for this test, of the parts of VERSA's
interface the adapter touches (``versa.definition``'s ``BaseMetric``, ``MetricRegistry``,
``MetricMetadata`` and enums, the factory's ``metric_class(config)`` call, and the scorer's
discovery of ``register_*_metric`` functions in the ``versa`` namespace), as read at VERSA
commit c398480a. The stand-in checks our side only; the end-to-end test needs real VERSA.
The legacy ``torchmos_setup`` / ``torchmos_metric`` pair needs no VERSA.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import enum
import importlib
import json
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import torchmos.functional as F
from torchmos import hub, synth
from torchmos.adapters import versa as adapter
from torchmos.adapters.versa import torchmos_metric, torchmos_setup

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "integrations" / "versa" / "torchmos.yaml"
# VERSA's import points numba's cache at ./versa_cache unless NUMBA_CACHE_DIR is set
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "torchmos-test-numba-cache"))
try:
    import versa.definition  # noqa: F401
    REAL_VERSA = True
except ImportError:
    REAL_VERSA = False
needs_real_versa = pytest.mark.skipif(not REAL_VERSA, reason="needs VERSA, installed from its source "
                                      "(not on PyPI): see docs/integrations/versa.md")


# ----------------------------------------------------------------------------- the legacy pair


def test_setup_and_metric_follow_versa_conventions():
    handle = torchmos_setup("distillmos", use_gpu=False)
    x = synth.speech_like(1.0, fs=8000, seed=3).numpy().astype(np.float64)
    out = torchmos_metric(handle, x, 8000)
    assert list(out) == ["distillmos"]
    assert out["distillmos"] == pytest.approx(float(F.distillmos(torch.from_numpy(x).float(), fs=8000)), abs=TOL)
    # (time, channel) input is averaged; integer PCM is scaled; the key can be renamed
    pcm = np.round(x * 32767).astype(np.int16)
    stereo = np.stack([pcm, pcm], axis=1)
    got = torchmos_metric(handle, stereo, 8000, key="torchmos_dmos")
    assert got["torchmos_dmos"] == pytest.approx(float(F.distillmos(torch.from_numpy(pcm), fs=8000)), abs=TOL)
    with pytest.raises(ValueError, match="no-reference"):
        handle([torch.from_numpy(x)], 8000, refs=[torch.from_numpy(x)])


# ----------------------------------------------------------------------------- VERSA, real or stand-in


def _stand_in_versa() -> dict[str, types.ModuleType]:
    """Modules ``versa``, ``versa.definition``, ``versa.bin``, ``versa.bin.scorer`` with the
    interface the adapter uses (see the module docstring); nothing here scores audio."""

    MetricCategory = enum.Enum("MetricCategory", {"INDEPENDENT": "independent", "DEPENDENT": "dependent",
                                                  "NON_MATCH": "non_match", "DISTRIBUTIONAL": "distributional"})

    MetricType = enum.Enum("MetricType", {"FLOAT": "float"})

    @dataclasses.dataclass
    class MetricMetadata:
        name: str
        category: MetricCategory
        metric_type: MetricType
        requires_reference: bool
        requires_text: bool
        gpu_compatible: bool
        auto_install: bool
        dependencies: list
        description: str
        paper_reference: str | None = None
        implementation_source: str | None = None

    class MetricRegistry:
        def __init__(self):
            self.metrics, self.metadata, self.aliases = {}, {}, {}

        def register(self, metric_class, metadata, aliases=None):
            self.metrics[metadata.name], self.metadata[metadata.name] = metric_class, metadata
            self.aliases.update(dict.fromkeys(aliases or [], metadata.name))

        def get_metric(self, name):
            return self.metrics.get(self.aliases.get(name, name))

        def get_metadata(self, name):
            return self.metadata.get(self.aliases.get(name, name))

        def list_metrics(self):
            return sorted(self.metadata)

    class BaseMetric(abc.ABC):
        def __init__(self, config=None):
            self.config = config or {}
            self._setup()

        @abc.abstractmethod
        def _setup(self): ...

        @abc.abstractmethod
        def compute(self, predictions, references=None, metadata=None): ...

        @abc.abstractmethod
        def get_metadata(self): ...

    class MetricFactory:
        def __init__(self, registry):
            self.registry = registry

        def create_metric(self, name, config=None):
            cls = self.registry.get_metric(name)
            if not cls:
                raise ValueError(f"Metric '{name}' not found in registry")
            return cls(config)

    pkg = types.ModuleType("versa")
    pkg.__path__ = []
    definition = types.ModuleType("versa.definition")
    for obj in (MetricCategory, MetricType, MetricMetadata, MetricRegistry, BaseMetric, MetricFactory):
        setattr(definition, obj.__name__, obj)

    def populated_registry():  # as VersaScorer's default registry is built
        registry = MetricRegistry()
        for name in dir(pkg):
            if name.startswith("register_") and name.endswith("_metric") and callable(getattr(pkg, name)):
                getattr(pkg, name)(registry)
        return registry

    scorer = types.ModuleType("versa.bin.scorer")
    scorer.calls = []

    def main():  # records what the scorer would parse and the metrics it would find
        parser = argparse.ArgumentParser()
        parser.add_argument("--score_config")
        parser.add_argument("--pred")
        scorer.calls.append((list(sys.argv), parser.parse_args(), populated_registry().list_metrics()))

    scorer.main = main
    bin_ = types.ModuleType("versa.bin")
    bin_.__path__ = []
    bin_.scorer = scorer
    pkg.definition, pkg.bin, pkg.populated_registry = definition, bin_, populated_registry
    return {"versa": pkg, "versa.definition": definition, "versa.bin": bin_, "versa.bin.scorer": scorer}


@pytest.fixture(scope="module")
def api() -> Iterator[types.SimpleNamespace]:
    """``ns.metrics`` (torchmos.adapters.versa.metrics), ``ns.definition``, ``ns.registry()``
    (a populated registry as VERSA's scorer builds it), ``ns.real``."""
    if REAL_VERSA:
        from versa import definition
        from versa.scorer_shared import VersaScorer

        metrics = importlib.import_module("torchmos.adapters.versa.metrics")
        yield types.SimpleNamespace(metrics=metrics, definition=definition, real=True,
                                    registry=lambda: VersaScorer().registry)
        return
    fake = _stand_in_versa()
    ours = "torchmos.adapters.versa.metrics"
    with pytest.MonkeyPatch.context() as mp:
        for name, mod in fake.items():
            mp.setitem(sys.modules, name, mod)
        mp.delitem(sys.modules, ours, raising=False)
        metrics = importlib.import_module(ours)
        try:
            yield types.SimpleNamespace(metrics=metrics, definition=fake["versa.definition"], real=False,
                                        registry=fake["versa"].populated_registry)
        finally:
            sys.modules.pop(ours, None)
            if getattr(adapter, "metrics", None) is metrics:
                del adapter.metrics


def _small(kind: str, path: Path) -> Path:
    """A small, randomly initialised checkpoint of the real architecture (the official
    SCOREQ / VQScore weights are downloads; MSR-UTMOS has none)."""
    from torchmos.models.msr_utmos import MsrUtmosModel, SFISSLModel, tiny_config
    from torchmos.models.scoreq import ScoreqModel
    from torchmos.models.vqscore import VQScoreModel

    torch.manual_seed(7)
    if kind in ("nr", "ref"):
        net = ScoreqModel(kind, num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=64,
                          num_conv_pos_embedding_groups=4, num_conv_pos_embeddings=16, conv_dim=(32,) * 7)
        if kind == "nr":
            with torch.no_grad():
                net.mos_layer.bias.fill_(3.0)
        torch.save(net.to_official_state_dict(), path)
    elif kind == "vqscore":
        VQScoreModel(codebook_size=16, codebook_dim=8, channels=(16, 8), kmeans_init=False).save(path)
    else:
        MsrUtmosModel(SFISSLModel("hubert", tiny_config("hubert"), {"filter": "naf", "n_rff": 16,
                                                                    "hidden": [16, 16]})).eval().save(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("versa-ckpt")
    return {k: _small(k, d / f"{k}.pt") for k in ("nr", "ref", "vqscore", "msr")}


def _clip(fs: int, seed: int, seconds: float = 1.0) -> np.ndarray:
    return synth.speech_like(seconds, fs=fs, seed=seed).numpy().astype(np.float64)  # VERSA hands float64


def test_every_card_has_one_registration_and_all_register(api):
    m = api.metrics
    for card in hub.list_cards():
        fn = getattr(m, f"register_torchmos_{card.name.replace('-', '_')}_metric")
        registry = api.definition.MetricRegistry()
        fn(registry)
        (name,) = registry.list_metrics()
        meta = registry.get_metadata(name)
        assert isinstance(meta, api.definition.MetricMetadata)
        assert (meta.card, meta.sample_rate, meta.requires_reference) == (card.name, card.sample_rate, card.mode == "ref")
        assert meta.category == (api.definition.MetricCategory.DEPENDENT if card.mode == "ref"
                                 else api.definition.MetricCategory.INDEPENDENT)
        assert meta.gpu_compatible and not meta.requires_text
    registry = api.definition.MetricRegistry()
    m.register_torchmos_metric(registry)
    assert registry.list_metrics() == sorted(m.metric_classes())
    assert registry.get_metric("torchmos_scoreq") is m.TorchmosScoreqNrMetric  # VERSA's "scoreq" alias, ours
    assert {registry.get_metadata(n).output_key for n in ("torchmos_scoreq_nr", "torchmos_scoreq_ref",
                                                           "torchmos_vqscore")} == {"scoreq_nr", "scoreq_ref", "vqscore"}
    assert registry.get_metadata("torchmos_scoreq_nr").card == "scoreq-nr-synthetic"  # VERSA's default domain
    scoreq = api.definition.MetricRegistry()
    m.register_torchmos_scoreq_metric(scoreq)  # as VERSA's register_scoreq_metric: nr (+ alias) and ref
    assert scoreq.list_metrics() == ["torchmos_scoreq_nr", "torchmos_scoreq_ref"]


def test_the_scorer_finds_torchmos_only_once_registered(api, monkeypatch):
    versa_pkg = sys.modules["versa"]
    monkeypatch.setattr(versa_pkg, "register_torchmos_metric", None, raising=False)  # restored afterwards
    factory = api.definition.MetricFactory(api.registry())
    with pytest.raises(ValueError, match="Metric 'torchmos' not found in registry"):
        factory.create_metric("torchmos", {"name": "torchmos"})
    api.metrics.register_with_versa()
    metric = api.definition.MetricFactory(api.registry()).create_metric("torchmos", {"name": "torchmos",
                                                                                     "use_gpu": False})
    x = _clip(16000, 1)
    got = metric.compute(x, None, {"key": "u1", "sample_rate": 16000})
    assert got == {"distillmos": pytest.approx(float(F.distillmos(torch.from_numpy(x), fs=16000)), abs=TOL)}


def test_no_reference_entries_match_functional(api, ckpt):
    m = api.metrics
    x8, x24 = _clip(8000, 2), _clip(24000, 3)
    dm = m.TorchmosDistillmosMetric({"name": "torchmos_distillmos", "use_gpu": False})
    assert dm.get_metadata().sample_rate == 16000
    assert dm.compute(x8, metadata={"sample_rate": 8000})["distillmos"] == pytest.approx(
        float(F.distillmos(torch.from_numpy(x8), fs=8000)), abs=TOL)
    # (time, channel) is averaged, int16 is scaled, as the legacy pair does
    pcm = np.round(x8 * 32767).astype(np.int16)
    assert dm.compute(np.stack([pcm, pcm], 1), metadata={"sample_rate": 8000})["distillmos"] == pytest.approx(
        float(F.distillmos(torch.from_numpy(pcm), fs=8000)), abs=TOL)
    nr = m.TorchmosScoreqNrMetric({"data_domain": "natural", "checkpoint": str(ckpt["nr"]), "key": "sq"})
    assert nr.card.name == "scoreq-nr-natural"
    assert nr.compute(x24, x24, {"sample_rate": 24000}) == {"sq": pytest.approx(
        float(F.scoreq_nr(torch.from_numpy(x24), 24000, domain="natural", checkpoint=ckpt["nr"])), abs=TOL)}
    vq = m.TorchmosVqscoreMetric({"checkpoint": str(ckpt["vqscore"])})
    assert vq.compute(x8, metadata={"sample_rate": 8000})["vqscore"] == pytest.approx(
        float(F.vqscore(torch.from_numpy(x8), 8000, checkpoint=ckpt["vqscore"])), abs=TOL)
    msr = m.TorchmosMsrUtmosMetric({"checkpoint": str(ckpt["msr"])})
    assert msr.get_metadata().sample_rate == 0  # the clip's own rate
    assert msr.compute(x24, metadata={"sample_rate": 24000})["msr_utmos"] == pytest.approx(
        float(F.msr_utmos(torch.from_numpy(x24), 24000, checkpoint=ckpt["msr"])), abs=TOL)


def test_reference_entry_matches_functional_and_needs_the_reference(api, ckpt):
    m = api.metrics
    x, ref = _clip(16000, 4), _clip(16000, 5)
    metric = m.TorchmosScoreqRefMetric({"checkpoint": str(ckpt["ref"])})
    assert metric.card.name == "scoreq-ref-synthetic" and metric.get_metadata().requires_reference
    want = float(F.scoreq_ref(torch.from_numpy(x), torch.from_numpy(ref), 16000, domain="synthetic",
                              checkpoint=ckpt["ref"]))
    assert metric.compute(x, ref, {"sample_rate": 16000}) == {"scoreq_ref": pytest.approx(want, abs=TOL)}
    with pytest.raises(ValueError, match=r"utt7.*--gt"):
        metric.compute(x, None, {"key": "utt7", "sample_rate": 16000})


@pytest.mark.parametrize("cls_name, config, match", [
    ("TorchmosDistillmosMetric", {"cache_dir": "x"},
     r"'torchmos_distillmos'.*unknown option\(s\) \['cache_dir'\].*set that variable to choose the folder"),
    ("TorchmosScoreqNrMetric", {"model_cache": "x"}, r"\['model_cache'\].*\$TORCHMOS_HOME"),
    ("TorchmosDistillmosMetric", {"data_domain": "natural"}, r"unknown option\(s\) \['data_domain'\]"),
    ("TorchmosScoreqNrMetric", {"data_domain": "telephone"}, r"data_domain must be one of"),
    ("TorchmosMetric", {"model": "nope"}, r"unknown model 'nope'"),
    ("TorchmosMetric", {"key": ""}, r"key must be a non-empty string"),
    ("TorchmosMetric", {"options": ["bf16"]}, r"options must be a mapping"),
])
def test_bad_entries_are_refused_naming_the_option(api, cls_name, config, match):
    with pytest.raises(ValueError, match=match):
        getattr(api.metrics, cls_name)(config)


def test_example_yaml_entries_resolve(api):
    entries = yaml.safe_load(EXAMPLE.read_text())
    registry = api.definition.MetricRegistry()
    api.metrics.register_torchmos_metric(registry)
    cards = []
    for entry in entries:
        cls = registry.get_metric(entry["name"])
        assert cls is not None, f"{entry['name']} is not registered"
        cards.append(cls.resolve(entry)[0].name)
    assert cards == ["distillmos", "scoreq-nr-synthetic", "scoreq-ref-synthetic", "vqscore"]


def test_module_main_registers_then_runs_the_scorer(api, monkeypatch):
    if api.real:
        pytest.skip("with real VERSA, test_versa_scorer_end_to_end runs the scorer itself")
    from torchmos.adapters.versa.__main__ import PROG, main

    monkeypatch.setattr(sys.modules["versa"], "register_torchmos_metric", None, raising=False)
    argv_before = list(sys.argv)
    main(["--score_config", "c.yaml", "--pred", "p.scp"])
    argv, args, found = sys.modules["versa.bin.scorer"].calls[-1]
    assert argv == [PROG, "--score_config", "c.yaml", "--pred", "p.scp"] and args.pred == "p.scp"
    assert set(api.metrics.metric_classes()) <= set(found) and sys.argv == argv_before


def test_without_versa_the_versa_form_names_say_how_to_install_it(monkeypatch):
    for name in ("versa", "versa.definition", "versa.bin", "versa.bin.scorer"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of these fails
    monkeypatch.delitem(sys.modules, "torchmos.adapters.versa.metrics", raising=False)  # imported afresh
    monkeypatch.delattr(adapter, "metrics", raising=False)
    with pytest.raises(ImportError, match=r"not on PyPI.*github.com/wavlab-speech/versa"):
        from torchmos.adapters.versa import TorchmosMetric  # noqa: F401
    from torchmos.adapters.versa.__main__ import main

    with pytest.raises(SystemExit, match="install it from its source"):
        main(["--help"])
    assert callable(adapter.torchmos_setup)  # the legacy pair is still there


@needs_real_versa
def test_versa_scorer_end_to_end(ckpt, tmp_path):
    """VERSA's own scorer, run by ``python -m torchmos.adapters.versa`` on the example YAML
    (weights not on this machine replaced by small checkpoints) plus MSR-UTMOS and the
    generic entry; every score equals torchmos.functional's on the same files."""
    rates = [16000, 8000, 24000]
    preds, refs = {}, {}
    for i, fs in enumerate(rates):
        for table, seed, kind in ((preds, i, "pred"), (refs, 20 + i, "gt")):
            table[f"utt{i}"] = p = tmp_path / f"{kind}{i}.wav"
            sf.write(p, synth.speech_like(1.2, fs=fs, seed=seed).numpy(), fs, subtype="FLOAT")
    for name, table in (("pred.scp", preds), ("gt.scp", refs)):
        (tmp_path / name).write_text("".join(f"{k} {v}\n" for k, v in table.items()))
    own = {"scoreq-nr-synthetic": "nr", "scoreq-ref-synthetic": "ref", "vqscore": "vqscore"}
    config = yaml.safe_load(EXAMPLE.read_text())
    for entry in config:
        card = {"torchmos_scoreq_nr": "scoreq-nr-synthetic", "torchmos_scoreq_ref": "scoreq-ref-synthetic",
                "torchmos_vqscore": "vqscore"}.get(entry["name"])
        if card and hub.local_status(card) not in ("cache", "package"):
            entry["checkpoint"] = str(ckpt[own[card]])
    config += [{"name": "torchmos_msr_utmos", "checkpoint": str(ckpt["msr"])},
               {"name": "torchmos", "model": "distillmos", "key": "dmos_generic"}]
    (tmp_path / "score.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "torchmos.adapters.versa", "--pred", "pred.scp", "--gt", "gt.scp",
           "--score_config", "score.yaml", "--output_file", "out.jsonl", "--io", "soundfile"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["key"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted(preds)
    ck = {e["name"]: e.get("checkpoint") for e in config}
    for key, fs in zip(preds, rates):
        x = torch.from_numpy(sf.read(preds[key])[0])
        r = torch.from_numpy(sf.read(refs[key])[0])
        want = {
            "distillmos": F.distillmos(x, fs), "dmos_generic": F.distillmos(x, fs),
            "scoreq_nr": F.scoreq_nr(x, fs, domain="synthetic", checkpoint=ck["torchmos_scoreq_nr"]),
            "scoreq_ref": F.scoreq_ref(x, r, fs, domain="synthetic", checkpoint=ck["torchmos_scoreq_ref"]),
            "vqscore": F.vqscore(x, fs, checkpoint=ck["torchmos_vqscore"]),
            "msr_utmos": F.msr_utmos(x, fs, checkpoint=ck["torchmos_msr_utmos"]),
        }
        got = {k: v for k, v in rows[key].items() if k != "key"}
        assert got == {k: pytest.approx(float(v), abs=TOL) for k, v in want.items()}, key
