"""MOSLoss: the cost of its gradients, and how easily it is fooled.

Two parts, one run, results in benchmarks/results/mos_loss.json (with the commit and
whether the tree was clean):

* ``memory``: one forward + backward of ``MOSLoss("distillmos")`` on a batch of clips,
  with and without ``checkpoint_cnn``, each in a fresh subprocess (peak RSS is a
  per-process high-water mark): peak RSS growth over the loaded model, wall time, and
  the loss values (equal). Ratios are what to read; absolute times are this machine's.
* ``adversarial``: a few dozen Adam steps *on the waveform* of a noisy clip to minimise
  ``5 - DistillMOS``, from noisy generated speech (DistillMOS about 2.4). Reported every
  few steps: DistillMOS, and against the clean reference PESQ (wideband, the ``pesq``
  package) and SI-SDR (torchmetrics). Two attacks: plain, and with a random time shift
  (a fraction of the STFT hop, which moves every analysis frame) and gain at every step
  (expectation over transformations); on generated speech, and on a real recording
  (babble at 0 dB) when the opt-in shared/data/speech is present. Each result is also scored on views the attack
  did not see: the clip delayed by half a hop (80 samples), and SCOREQ NR when its
  weights are present (an ensemble's second predictor; skipped and said so otherwise).

    python benchmarks/bench_mos_loss.py                 # both parts, as docs/training/mos-loss.md (minutes)
    python benchmarks/bench_mos_loss.py --parts memory --clips 2 --seconds 7
    python benchmarks/bench_mos_loss.py --parts adversarial --steps 30 --snr 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SPEECH, provenance  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "mos_loss.json"

CHILD = r"""
import json, resource, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads({threads})
from torchmos import synth
from torchmos.losses import MOSLoss
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
loss_fn = MOSLoss("distillmos", checkpoint_cnn={ckpt})  # default crops per call: 4, checkpointed 1
clips = [synth.add_noise(synth.speech_like({seconds}, seed=i), snr_db=5.0, seed=i) for i in range({clips})]
with torch.no_grad():
    loss_fn([clips[0][:16000]])  # load the network, warm up
base = rss_mb()
x = torch.stack(clips).requires_grad_()
t = time.perf_counter()
loss = loss_fn(x)
loss.backward()
wall = time.perf_counter() - t
print(json.dumps({{"checkpoint_cnn": {ckpt}, "peak_rss_mb": rss_mb(), "baseline_mb": base,
                  "growth_mb": rss_mb() - base, "wall_s": wall, "loss": float(loss),
                  "grad_norm": float(x.grad.norm())}}))
"""


def memory(clips: int, seconds: float, threads: int) -> dict:
    rows = []
    for ckpt in (False, True):
        code = CHILD.format(threads=threads, ckpt=ckpt, clips=clips, seconds=seconds)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    plain, ckpt = rows
    return {"clips": clips, "seconds": seconds, "threads": threads,
            "crops_per_call": {"plain": 4, "checkpoint_cnn": 1}, "runs": rows,
            "growth_ratio_checkpointed_over_plain": ckpt["growth_mb"] / plain["growth_mb"],
            "time_ratio_checkpointed_over_plain": ckpt["wall_s"] / plain["wall_s"],
            "loss_equal": plain["loss"] == ckpt["loss"]}


def _pesq(clean: torch.Tensor, x: torch.Tensor) -> float:
    from pesq import pesq

    return float(pesq(16000, clean.double().numpy(), x.detach().double().numpy(), "wb"))


def _sisdr(clean: torch.Tensor, x: torch.Tensor) -> float:
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as si_sdr

    return float(si_sdr(x.detach(), clean))


def _second_predictor():
    """SCOREQ NR (natural) when its weights are on this machine (never downloaded here)."""
    from torchmos import hub

    if hub.local_file("scoreq-nr-natural") is None:
        return None
    import torchmos.functional as F

    return lambda x: float(F.scoreq_nr([x.detach()]))


def attack(noisy: torch.Tensor, clean: torch.Tensor, steps: int, lr: float, eot: bool, every: int,
           seed: int = 0) -> dict:
    import torchmos.functional as F
    from torchmos.losses import MOSLoss

    loss_fn = MOSLoss("distillmos")
    other = _second_predictor()
    g = torch.Generator().manual_seed(seed)
    x = noisy.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)

    def evaluate(step: int) -> dict:
        y = x.detach()
        row = {"step": step, "distillmos": float(F.distillmos([y])),
               "distillmos_delayed_80": float(F.distillmos([torch.nn.functional.pad(y, (80, 0))])),
               "pesq_wb": _pesq(clean, y), "si_sdr_db": _sisdr(clean, y),
               # energy of the change made to the noisy input, relative to it (None before any step)
               "change_db": float(10 * torch.log10((y - noisy).pow(2).sum() / noisy.pow(2).sum())) if step else None}
        row["scoreq_nr"] = other(y) if other is not None else None
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    trace = [evaluate(0)]
    t = time.perf_counter()
    for step in range(1, steps + 1):
        opt.zero_grad()
        y = x
        if eot:  # a random shift of 0-159 samples (moves every STFT frame) and gain of -6..+6 dB
            shift = int(torch.randint(0, 160, (1,), generator=g))
            gain = 10 ** ((float(torch.rand(1, generator=g)) * 12 - 6) / 20)
            y = torch.nn.functional.pad(x, (shift, 0)) * gain
        loss_fn([y]).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
        if step % every == 0 or step == steps:
            trace.append(evaluate(step))
    return {"eot": eot, "steps": steps, "lr": lr, "seconds": time.perf_counter() - t, "trace": trace,
            "second_predictor": "scoreq-nr-natural" if other is not None else
            "not run: SCOREQ NR weights are not on this machine (no download in benchmarks)"}


def adversarial(steps: int, lr: float, snr: float, seconds: float, every: int) -> dict:
    """The attacks on generated speech (always) and on the real recording
    ``pesq_speech_bab_0dB.wav`` of shared/data/speech against its clean original (when that
    opt-in folder is present; never copied into the project)."""
    from torchmos import audio, synth

    clean = synth.speech_like(seconds, seed=11)
    pairs = {f"synth.speech_like({seconds}, seed=11) + pink noise at {snr:g} dB SNR":
             (synth.add_noise(clean, snr_db=snr, seed=11).clamp(-1, 1), clean)}
    if (SPEECH / "pesq_speech_bab_0dB.wav").is_file():
        noisy_real = audio.read(SPEECH / "pesq_speech_bab_0dB.wav")[0].reshape(-1)
        pairs["shared/data/speech/pesq_speech_bab_0dB.wav (real speech, babble at 0 dB) vs pesq_speech.wav"] = (
            noisy_real, audio.read(SPEECH / "pesq_speech.wav")[0].reshape(-1))
    out: dict = {"steps": steps, "lr": lr, "clips": {}}
    for name, (noisy, ref) in pairs.items():
        out["clips"][name] = {"plain": attack(noisy, ref, steps, lr, eot=False, every=every),
                              "random_shift_gain": attack(noisy, ref, steps, lr, eot=True, every=every)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["memory", "adversarial"], choices=["memory", "adversarial"])
    ap.add_argument("--clips", type=int, default=4, help="memory: clips (one 7.68 s crop each) per batch")
    ap.add_argument("--seconds", type=float, default=7.0, help="memory: clip length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate on the samples (1e-3, as the docs)")
    ap.add_argument("--snr", type=float, default=5.0, help="generated speech's pink-noise SNR in dB (5, as the docs)")
    ap.add_argument("--attack-seconds", type=float, default=3.0)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"provenance": provenance()}
    if "memory" in args.parts:
        result["memory"] = memory(args.clips, args.seconds, args.threads)
    if "adversarial" in args.parts:
        result["adversarial"] = adversarial(args.steps, args.lr, args.snr, args.attack_seconds, args.every)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2))


if __name__ == "__main__":
    main()
