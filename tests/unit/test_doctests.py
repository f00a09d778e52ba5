"""The docstring examples of the core modules run (adapters have their own lane)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchmos",
    "torchmos.audio",
    "torchmos.audio.checks",
    "torchmos.audio.resampling",
    "torchmos.audio.batches",
    "torchmos.audio.files",
    "torchmos.audio.entries",
    "torchmos.hub",
    "torchmos.hub.cards",
    "torchmos.hub.integrity",
    "torchmos.hub.download",
    "torchmos.hub.checkpoint",
    "torchmos.synth",
    "torchmos.losses",
    "torchmos.functional",
    "torchmos.functional._core",
    "torchmos.functional._cache",
    "torchmos.functional._distillmos",
    "torchmos.functional._scoreq",
    "torchmos.functional._vqscore",
    "torchmos.functional._msr_utmos",
    "torchmos.metrics._context",
    "torchmos.adapters._scoring",
    "torchmos.adapters.speechbrain_lengths",
    "torchmos.adapters.versa.legacy",
    "torchmos.models._deps",
    "torchmos.training",
    "torchmos.training.scoreq_model",
    "torchmos.training.scoreq_head",
    "torchmos.training.trainer",
    "torchmos.models",
    "torchmos.models.strict",
    "torchmos.models.distillmos",
    "torchmos.models.winograd",
    "torchmos.metrics.distillmos",
    "torchmos.models.vqscore",
    "torchmos.models.vqscore_codebook",
    "torchmos.models.scoreq",
    "torchmos.models.scoreq_keys",
    "torchmos.models.sfi",
    "torchmos.models.sfi_filters",
    "torchmos.models.sfi_geometry",
    "torchmos.metrics.scoreq",
    "torchmos.metrics.vqscore",
    "torchmos.training.data",
    "torchmos.training.scoreq",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
