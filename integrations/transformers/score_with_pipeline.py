#!/usr/bin/env python3
"""Score audio with ``transformers.pipeline("audio-quality")`` backed by a torchmos model.

    python score_with_pipeline.py [--model distillmos] [--model-dir DIR] [--batch-size 4] [FILE ...]

1. Saves the torchmos predictor as a transformers model directory (once):
   ``TorchmosForAudioQuality.from_torchmos(name).save_pretrained(DIR)`` writes
   ``config.json`` (with ``auto_map`` and ``custom_pipelines``, ready for ``push_to_hub``),
   ``model.safetensors``, ``preprocessor_config.json`` and the ``torchmos_hf.py`` shim.
2. Loads it offline with ``pipeline("audio-quality", model=DIR)`` (``import torchmos``
   registers the task) and prints one JSON line per input: ``{"input", "score", "model"}``.

Without files, it scores a few generated clips given as a path, raw bytes, a waveform
array and a ``{"array", "sampling_rate"}`` dict, to show every input kind.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile

import soundfile as sf

import torchmos  # noqa: F401  (registers the "audio-quality" pipeline with transformers)


def save_model(name: str, model_dir: str) -> None:
    from torchmos.adapters.hf import TorchmosForAudioQuality

    if not os.path.exists(os.path.join(model_dir, "config.json")):
        TorchmosForAudioQuality.from_torchmos(name).save_pretrained(model_dir)


def demo_inputs(workdir: str) -> list[tuple[str, object]]:
    """A path, bytes, a 16 kHz array and an 8 kHz dict, all speech-like."""
    from torchmos import synth

    x16 = synth.speech_like(1.5, fs=16000, seed=1).numpy()
    x8 = synth.speech_like(2.0, fs=8000, seed=2).numpy()
    path = os.path.join(workdir, "clip.wav")
    sf.write(path, x16, 16000, subtype="FLOAT")
    buf = io.BytesIO()
    sf.write(buf, x8, 8000, format="FLAC")
    return [
        ("path", path),
        ("bytes", buf.getvalue()),
        ("array@16k", x16),
        ("dict@8k", {"array": x8, "sampling_rate": 8000}),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="distillmos", help="torchmos model card")
    parser.add_argument("--model-dir", default=None, help="where to save/load the transformers model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)

    from transformers import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or os.path.join(tmp, args.model)
        save_model(args.model, model_dir)
        pipe = pipeline("audio-quality", model=model_dir, device="cpu")
        named = [(f, f) for f in args.files] if args.files else demo_inputs(tmp)
        results = pipe([x for _, x in named], batch_size=args.batch_size)
        rows = [{"input": name, **r} for (name, _), r in zip(named, results)]
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
