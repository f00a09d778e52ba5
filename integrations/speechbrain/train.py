#!/usr/bin/env python3
"""Miniature SpeechBrain enhancement recipe that monitors predicted MOS with torchmos.

A tiny spectral-mask enhancer is trained on generated speech-like clips (clean + pink
noise). On the validation set the recipe scores the enhanced output with
``torchmos.adapters.speechbrain.MOSStats``, logs the mean MOS with
``train_logger.log_stats`` and keeps the checkpoint with the best MOS
(``max_keys=["mos"]``). The test stage reloads that checkpoint, writes the enhanced clips
and the per-utterance MOS (``MOSStats.write_stats``).

To run::

    python train.py hparams/train.yaml [--device cpu] [--output_folder results/x]

Copy the three MOS pieces into your own recipe: ``mos_stats`` in the YAML, the
``append`` in ``compute_objectives`` and the ``summarize`` in ``on_stage_end``.
"""

import json
import os
import sys

import soundfile as sf
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.processing.features import spectral_magnitude


class MiniSEBrain(sb.Brain):
    """Spectral masking enhancer with MOS monitoring."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        noisy_wavs, lens = batch.noisy_sig
        spec = self.hparams.compute_stft(noisy_wavs)  # (B, frames, bins, 2)
        mask = self.modules.model(torch.log1p(spectral_magnitude(spec, power=0.5)))
        return self.hparams.compute_istft(spec * mask.unsqueeze(-1), sig_length=noisy_wavs.shape[1])

    def compute_objectives(self, predictions, batch, stage):
        clean_wavs, lens = batch.clean_sig
        loss = sb.nnet.losses.mse_loss(predictions, clean_wavs, lens)
        self.loss_metric.append(batch.id, predictions, clean_wavs, lens)
        if stage != sb.Stage.TRAIN:
            # called as the Voicebank recipes call their PESQ stats. Relative lengths: the
            # padding after each clip is never scored. A reference model (scoreq-ref-*)
            # compares with the clean target; a no-reference one ignores it (ignore_target).
            self.mos_metric.append(batch.id, predict=predictions, target=clean_wavs, lengths=lens)
        if stage == sb.Stage.TEST:
            self._save_enhanced(batch.id, predictions, lens)
        return loss

    def _save_enhanced(self, ids, predictions, lens):
        os.makedirs(self.hparams.enhanced_folder, exist_ok=True)
        n = torch.round(lens * predictions.shape[1]).long()
        for uid, wav, length in zip(ids, predictions.detach().cpu(), n):
            path = os.path.join(self.hparams.enhanced_folder, f"{uid}.wav")
            sf.write(path, wav[:length].numpy(), self.hparams.sample_rate, subtype="FLOAT")

    def on_stage_start(self, stage, epoch=None):
        self.loss_metric = self.hparams.loss_stats()
        if stage != sb.Stage.TRAIN:
            self.mos_metric = self.hparams.mos_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss, "mos": self.mos_metric.summarize("average")}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                {"Epoch": epoch, "lr": self.hparams.lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, max_keys=["mos"])
        else:
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            with open(self.hparams.mos_stats_file, "w", encoding="utf-8") as w:
                self.mos_metric.write_stats(w)


# ----------------------------------------------------------------------------- data


def prepare_data(data_folder, n_train, n_valid, n_test, sample_rate, seed=0):
    """Write clean/noisy speech-like pairs and SpeechBrain JSON manifests (once)."""
    from torchmos import synth

    manifests = {s: os.path.join(data_folder, f"{s}.json") for s in ("train", "valid", "test")}
    if all(os.path.exists(p) for p in manifests.values()):
        return
    os.makedirs(data_folder, exist_ok=True)
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    k = seed
    for split, count in counts.items():
        entries = {}
        for i in range(count):
            k += 1
            seconds = 1.0 + 0.25 * (k % 5)  # 1.0 .. 2.0 s: batches need padding
            clean = synth.speech_like(seconds, fs=sample_rate, seed=k)
            noisy = synth.add_noise(clean, snr_db=5.0 + 2 * (k % 4), seed=k).clamp(-1, 1)
            uid = f"{split}_{i:03d}"
            paths = {}
            for name, wav in (("clean", clean), ("noisy", noisy)):
                paths[name] = os.path.join(data_folder, split, name, f"{uid}.wav")
                os.makedirs(os.path.dirname(paths[name]), exist_ok=True)
                sf.write(paths[name], wav.numpy(), sample_rate, subtype="FLOAT")
            entries[uid] = {"noisy_wav": paths["noisy"], "clean_wav": paths["clean"], "length": seconds}
        with open(manifests[split], "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=2)


def dataio_prep(hparams):
    """Datasets that give (noisy_sig, clean_sig); batches are padded with relative lengths."""

    @sb.utils.data_pipeline.takes("noisy_wav", "clean_wav")
    @sb.utils.data_pipeline.provides("noisy_sig", "clean_sig")
    def audio_pipeline(noisy_wav, clean_wav):
        yield sb.dataio.dataio.read_audio(noisy_wav)
        yield sb.dataio.dataio.read_audio(clean_wav)

    datasets = {}
    for split in ("train", "valid", "test"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_json(
            json_path=hparams[f"{split}_annotation"],
            dynamic_items=[audio_pipeline],
            output_keys=["id", "noisy_sig", "clean_sig"],
        )
    return datasets


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    prepare_data(hparams["data_folder"], hparams["n_train"], hparams["n_valid"], hparams["n_test"],
                 hparams["sample_rate"], seed=hparams["seed"])
    datasets = dataio_prep(hparams)

    brain = MiniSEBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_set=datasets["train"],
        valid_set=datasets["valid"],
        train_loader_kwargs=hparams["dataloader_options"],
        valid_loader_kwargs=hparams["dataloader_options"],
    )
    # the test stage reloads the checkpoint with the best validation MOS
    brain.evaluate(datasets["test"], max_key="mos", test_loader_kwargs=hparams["dataloader_options"])
