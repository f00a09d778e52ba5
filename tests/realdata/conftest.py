"""Opt-in real speech: ``../shared/data/speech`` beside the project, or ``$TORCHMOS_SPEECH_DATA``.

Never copied into the project. Tests using the ``speech_dir`` fixture are skipped, with
the reason printed by ``pytest -rs``, when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def speech_data_dir() -> Path:
    return Path(os.environ.get("TORCHMOS_SPEECH_DATA") or ROOT.parent / "shared" / "data" / "speech")


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    d = speech_data_dir()
    if not (d / "pesq_speech.wav").is_file():
        pytest.skip(f"real speech not found at {d} (set TORCHMOS_SPEECH_DATA to the shared/data/speech folder)")
    return d
