"""The docstring examples of the core modules run (adapters have their own lane)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchmos",
    "torchmos.audio",
    "torchmos.hub",
    "torchmos.synth",
    "torchmos.losses",
    "torchmos.functional",
    "torchmos.models",
    "torchmos.models.distillmos",
    "torchmos.metrics.distillmos",
    "torchmos.models.vqscore",
    "torchmos.models.scoreq",
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
