"""``import torchmos`` and the default scoring path stay lean; the transformers hook is robust.

Every check runs in a fresh interpreter and reads ``sys.modules`` there: what a user's
process would have loaded. torchmetrics alone costs seconds (it imports scipy and, when
installed, transformers), so the metric classes load on first use, torchaudio only when a
clip must be resampled, and the training recipes only when ``torchmos train X`` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from torchmos import synth

HEAVY = ["torchmetrics", "transformers", "scipy", "matplotlib", "torchaudio", "lightning", "librosa",
         "torchmos.metrics", "torchmos.training"]

REPORT = (
    "\nimport json, sys\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)


def loaded_after(code: str, *args: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", code + REPORT, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wav16k(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lean")
    for i in range(2):
        sf.write(d / f"c{i}.wav", synth.speech_like(1.0, 16000, seed=i).numpy(), 16000, subtype="PCM_16")
    return d


def test_import_torchmos_is_lean():
    assert loaded_after("import torchmos, torchmos.functional, torchmos.audio, torchmos.hub") == []


def test_functional_distillmos_at_16k_is_lean():
    code = ("import torch, torchmos.functional as F\n"
            "s = F.distillmos([torch.randn(16000) * 0.1, torch.randn(24000) * 0.1], fs=16000)\n"
            "assert s.shape == (2,) and bool(((s >= 1) & (s <= 5)).all()), s\n")
    assert loaded_after(code) == []


def test_cli_score_with_the_default_model_is_lean(wav16k, tmp_path):
    out = tmp_path / "s.csv"
    code = ("import sys\nfrom torchmos import cli\n"
            "rc = cli.main(['score', sys.argv[1], '-o', sys.argv[2], '-q'])\nassert rc == 0, rc\n")
    assert loaded_after(code, str(wav16k), str(out)) == []
    assert out.read_text().count("\n") == 3  # header + 2 rows


def test_cli_help_and_models_are_lean():
    code = ("from torchmos import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert cli.main(['models']) == 0\n")
    assert loaded_after(code) == []


def test_resampling_loads_torchaudio_only_then():
    code = ("import torch, torchmos.functional as F\n"
            "F.distillmos([torch.randn(8000) * 0.1], fs=8000)\n")
    assert loaded_after(code) == ["torchaudio"]


def test_metric_classes_load_on_first_use():
    code = ("import sys, torchmos\n"
            "assert 'torchmetrics' not in sys.modules\n"
            "from torchmos import DistillMOS\n"
            "assert DistillMOS.higher_is_better and 'torchmetrics' in sys.modules\n"
            "assert torchmos.DistillMOS is DistillMOS and 'DistillMOS' in dir(torchmos)\n")
    assert "torchmetrics" in loaded_after(code)


def test_unknown_attribute_is_an_attribute_error():
    import torchmos

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        torchmos.Nope  # noqa: B018
    assert not hasattr(torchmos, "Nope")


def test_train_loads_only_the_recipe_asked_for():
    code = ("import sys\nfrom torchmos import cli\n"
            "p = cli.build_parser(['train', 'vqscore', '--help'])\n"
            "assert 'torchmos.training.vqscore' in sys.modules\n"
            "assert 'torchmos.training.scoreq' not in sys.modules\n"
            "assert 'torchmos.training.sfi_distill' not in sys.modules\n")
    assert "torchmos.training" in loaded_after(code)


# ----------------------------------------------------------------------------- transformers hook

HOOK = r'''
import importlib, importlib.util, os, sys, json
import torch
import torchmos
assert "transformers.pipelines" not in sys.modules
{before}
from transformers import pipeline
pipe = pipeline("audio-quality", model=sys.argv[1], device="cpu")
out = pipe(torch.randn(16000) * 0.1, sampling_rate=16000)
print(json.dumps([type(pipe).__name__, out["model"], 1.0 <= out["score"] <= 5.0]))
'''


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory) -> Path:
    """A DistillMOS model saved in transformers' layout (weights from the installed package)."""
    from torchmos.adapters.hf import TorchmosForAudioQuality

    d = tmp_path_factory.mktemp("hf") / "distillmos-hf"
    TorchmosForAudioQuality.from_torchmos("distillmos").save_pretrained(d)
    return d


@pytest.mark.parametrize("before", [
    "",
    # a bare probe must not disarm the hook
    "assert importlib.util.find_spec('transformers.pipelines') is not None",
    # a first import that fails midway (here: one of its submodules cannot be imported)
    # must not lose it
    "sys.modules['transformers.pipelines.base'] = None\n"
    "try:\n"
    "    importlib.import_module('transformers.pipelines')\n"
    "    raise SystemExit('expected the sabotaged import to fail')\n"
    "except ImportError:\n"
    "    pass\n"
    "assert 'transformers.pipelines' not in sys.modules\n"
    "del sys.modules['transformers.pipelines.base']",
], ids=["plain", "after-find_spec", "after-failed-import"])
def test_pipeline_works_after_import_torchmos_alone(before, hf_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", HOOK.format(before=before), str(hf_model_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["AudioQualityPipeline", "distillmos", True]


def test_a_torchaudio_that_does_not_load_is_named_with_the_fix():
    """A torchaudio built for another torch raises OSError on import; torchmos says which
    pair to install instead of showing the dynamic linker's error alone."""
    code = r'''
import importlib.abc, sys
class _Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchaudio":
            raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")
sys.meta_path.insert(0, _Broken())
import torch, torchmos.functional as F
try:
    F.distillmos([torch.randn(8000) * 0.1], fs=8000)
except ImportError as e:
    msg = str(e)
    assert "does not load beside torch" in msg and "undefined symbol" in msg, msg
    assert "pip install" in msg and "docs/install.md" in msg, msg
    print("named")
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "named"
