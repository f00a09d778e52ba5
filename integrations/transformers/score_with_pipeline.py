#!/usr/bin/env python3
"""Score audio with a transformers pipeline backed by a torchmos model.

    python score_with_pipeline.py [--task audio-quality|audio-classification] [--model distillmos]
                                  [--model-dir DIR] [--batch-size 4] [FILE ...]

1. Saves the torchmos predictor as a transformers model directory (once):
   ``TorchmosForAudioQuality.from_torchmos(name).save_pretrained(DIR)`` writes
   ``config.json`` (a regression head's config, with ``auto_map`` and ``custom_pipelines``,
   ready for ``push_to_hub``), ``model.safetensors``, ``preprocessor_config.json`` and the
   ``torchmos_hf.py`` shim.
2. Loads it offline with ``pipeline(TASK, model=DIR)`` (``import torchmos`` registers the
   model and the ``"audio-quality"`` task) and prints one JSON line per input:
   ``{"input", "score", "model"}`` (audio-quality) or ``{"input", "score", "label"}``
   (transformers' own audio-classification pipeline; the score is the MOS itself).

Without files, it scores a few generated clips given as a path, raw bytes, a waveform
array, a ``{"array", "sampling_rate"}`` dict and, where torchcodec can decode, a torchcodec
``AudioDecoder``, to show every input kind. transformers' audio-classification pipeline
decodes paths and bytes with the ``ffmpeg`` program and refuses ``AudioDecoder`` inputs
(transformers 5.4 to 5.24), so for that task files are read here and given as dicts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile

import soundfile as sf

import torchmos  # noqa: F401  (registers the model and the "audio-quality" pipeline with transformers)
from torchmos import audio

TASKS = ("audio-quality", "audio-classification")


def save_model(name: str, model_dir: str) -> None:
    from torchmos.adapters.hf import TorchmosForAudioQuality

    if not os.path.exists(os.path.join(model_dir, "config.json")):
        TorchmosForAudioQuality.from_torchmos(name).save_pretrained(model_dir)


def audio_decoder(path: str) -> object | None:
    """A torchcodec ``AudioDecoder`` of ``path`` (mixed down to mono), or ``None`` where
    torchcodec is not installed or finds no FFmpeg libraries it can load."""
    try:
        from torchcodec.decoders import AudioDecoder

        return AudioDecoder(path, num_channels=1)
    except (ImportError, RuntimeError, OSError):
        return None


def demo_inputs(workdir: str, task: str) -> list[tuple[str, object]]:
    """A path, bytes, a 16 kHz array, an 8 kHz dict (and an AudioDecoder), all speech-like."""
    from torchmos import synth

    x16 = synth.speech_like(1.5, fs=16000, seed=1).numpy()
    x8 = synth.speech_like(2.0, fs=8000, seed=2).numpy()
    path = os.path.join(workdir, "clip.wav")
    sf.write(path, x16, 16000, subtype="FLOAT")
    buf = io.BytesIO()
    sf.write(buf, x8, 8000, format="FLAC")
    inputs: list[tuple[str, object]] = [("array@16k", x16), ("dict@8k", {"array": x8, "sampling_rate": 8000})]
    if task == "audio-quality":
        inputs = [("path", path), ("bytes", buf.getvalue()), *inputs]
        decoder = audio_decoder(path)
        if decoder is not None:
            inputs.append(("AudioDecoder", decoder))
    return inputs


def file_input(path: str, task: str) -> object:
    """A file for the pipeline: its path, or (audio-classification) its samples as a dict."""
    if task == "audio-quality":
        return path
    x, fs = audio.read(path)
    return {"array": x.numpy(), "sampling_rate": fs}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default="audio-quality")
    parser.add_argument("--model", default="distillmos", help="torchmos model card")
    parser.add_argument("--model-dir", default=None, help="where to save/load the transformers model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)

    from transformers import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or os.path.join(tmp, args.model)
        save_model(args.model, model_dir)
        pipe = pipeline(args.task, model=model_dir, device="cpu")
        if args.files:
            named = [(f, file_input(f, args.task)) for f in args.files]
        else:
            named = demo_inputs(tmp, args.task)
        # the score itself: transformers 5.23+ does so for a regression head anyway, 5.4-5.22 need it said
        extra = {"function_to_apply": "none"} if args.task == "audio-classification" else {}
        results = pipe([x for _, x in named], batch_size=args.batch_size, **extra)
        # audio-classification: one [{"score", "label"}] list per input (one label: the model)
        rows = [{"input": name, **(r[0] if isinstance(r, list) else r)} for (name, _), r in zip(named, results)]
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
