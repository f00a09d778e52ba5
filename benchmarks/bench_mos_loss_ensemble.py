"""Is an ensemble of two MOS predictors harder to fool than one?

``bench_mos_loss.py`` shows that a few dozen Adam steps on a noisy clip's samples take
DistillMOS from about 2.3 to 4.9 while PESQ and SI-SDR against the clean speech go down.
This benchmark repeats that attack (same protocol: Adam on the waveform, learning rate
1e-3, 30 steps, clamped to [-1, 1] after each step) with three objectives:

* ``distillmos``: ``5 - DistillMOS`` (``MOSLoss("distillmos")``) alone;
* ``dnsmos``: ``5 - DNSMOS P.835 OVRL`` alone;
* ``ensemble``: the mean of the two.

DNSMOS P.835 is Microsoft's ONNX model shipped in the PyPI package ``speechmos``
(``dnsmos_models/sig_bak_ovr.onnx``). It takes raw 16 kHz audio, 144160 samples (9.01 s),
and computes its log-power spectrum inside the graph, so the whole graph converted to
torch with ``onnx2torch`` is differentiable w.r.t. the waveform. The clip is prepared as
speechmos does (a clip shorter than 9.01 s is doubled until it is long enough, then scored
on 9.01 s windows every second, the window count computed as speechmos computes it), and
its calibration polynomial is applied to each window before the mean. The torch copy is
checked against onnxruntime first (``parity``: max |diff| of the raw outputs per window,
and of the calibrated clip OVRL against ``speechmos.dnsmos.run``), and again at every
scoring step of the attacks (``dnsmos_ovrl_torch`` beside ``dnsmos_ovrl``).

Every few steps the attacked audio is scored with DistillMOS, DNSMOS OVRL (plus SIG and
BAK) through the official path (``speechmos.dnsmos.run``: onnxruntime, not the torch copy),
a held-out predictor that no arm optimises, DNSMOS P.808 (``model_v8.onnx``, on librosa's
mel spectrogram, same ``run`` call), and, against the clean speech, PESQ (wideband, the
``pesq`` package) and SI-SDR (torchmetrics), with the energy of the change made to the
noisy input (dB, relative to it). The clean speech is scored too (``clean_scores``): the
``summary`` gives, per arm, the first scored step at which the attacked noisy clip scores
at least as high as the clean one on each predictor.

Clips: generated speech (``synth.speech_like(3.0, seed=11)`` + pink noise at 5 dB SNR, as
``bench_mos_loss.py``), and the real recording ``pesq_speech_bab_0dB.wav`` against its
clean ``pesq_speech.wav`` when the opt-in ``../shared/data/speech`` is present (skipped
with a message otherwise; never copied into the project).

The extra dependencies are not the project's: ``pip install speechmos onnx2torch
onnxruntime`` (and ``pesq``) in the environment that runs this.

    python benchmarks/bench_mos_loss_ensemble.py                      # both clips, 3 arms, 30 steps
    python benchmarks/bench_mos_loss_ensemble.py --steps 60 --lr 1e-3 --every 5 --threads 1
    python benchmarks/bench_mos_loss_ensemble.py --arms ensemble --clips synth --parity-only

Results: benchmarks/results/mos_loss_ensemble.json (provenance, versions, parity, traces).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mos_loss import _pesq, _sisdr  # noqa: E402 - the same PESQ and SI-SDR as the single-predictor attack
from common import SPEECH, provenance  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "mos_loss_ensemble.json"
FS = 16000
INPUT_LENGTH = 9.01  # seconds, speechmos.dnsmos.INPUT_LENGTH
WINDOW = int(INPUT_LENGTH * FS)  # 144160 samples, the ONNX model's fixed input
# speechmos.dnsmos.DNSMOS.get_polyfit_val, non-personalised: np.poly1d coefficients, highest first
POLY = {"sig": (-0.08397278, 1.22083953, 0.0052439),
        "bak": (-0.13166888, 1.60915514, -0.39604546),
        "ovrl": (-0.06766283, 1.11546468, 0.04602535)}
ARMS = ("distillmos", "dnsmos", "ensemble")
EXTRA = ("speechmos", "onnxruntime", "onnx2torch", "onnx", "pesq", "librosa")


def _require() -> None:
    missing = []
    for mod in ("speechmos", "onnxruntime", "onnx2torch", "onnx", "pesq", "librosa"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        sys.exit(f"bench_mos_loss_ensemble: missing {', '.join(missing)}; these are not the project's "
                 "dependencies: pip install speechmos onnx2torch onnxruntime pesq")


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in EXTRA:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _model_path(name: str) -> str:
    import speechmos

    return str(Path(speechmos.__file__).resolve().parent / "dnsmos_models" / name)


def _poly(c: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for k in c:
        out = out * x + k
    return out


def windows(x: torch.Tensor) -> torch.Tensor:
    """(W, 144160): the windows speechmos scores, built from ``x`` differentiably
    (``speechmos.dnsmos.DNSMOS.__call__``: double the clip until it has 9.01 s, then one
    window per second, as many as its float arithmetic gives)."""
    while x.numel() < WINDOW:
        x = torch.cat([x, x])
    hops = int(math.floor(x.numel() / FS) - INPUT_LENGTH) + 1
    segs = []
    for idx in range(hops):
        start, end = int(idx * FS), int((idx + INPUT_LENGTH) * FS)
        seg = x[start:end]
        if seg.numel() < WINDOW:
            continue
        segs.append(seg)
    return torch.stack(segs)


class TorchDNSMOS(torch.nn.Module):
    """DNSMOS P.835 (sig_bak_ovr.onnx) converted by onnx2torch, frozen."""

    def __init__(self) -> None:
        super().__init__()
        from onnx2torch import convert

        self.net = convert(_model_path("sig_bak_ovr.onnx")).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def raw(self, segs: torch.Tensor) -> torch.Tensor:
        """(W, 3) uncalibrated SIG, BAK, OVRL of (W, 144160) windows."""
        return self.net(segs)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Calibrated clip SIG, BAK, OVRL (mean over windows) of one 1-D 16 kHz clip."""
        r = self.raw(windows(x))
        return {k: _poly(POLY[k], r[:, i]).mean() for i, k in enumerate(("sig", "bak", "ovrl"))}


def official(y: torch.Tensor) -> dict[str, float]:
    """speechmos.dnsmos.run on the clip: onnxruntime, and librosa's mel spectrogram for P.808."""
    from speechmos import dnsmos

    r = dnsmos.run(y.detach().numpy().astype("float32"), sr=FS)
    return {"ovrl": float(r["ovrl_mos"]), "sig": float(r["sig_mos"]), "bak": float(r["bak_mos"]),
            "p808": float(r["p808_mos"])}


def parity(tdns: TorchDNSMOS, clips: dict[str, torch.Tensor]) -> dict:
    """The torch copy against onnxruntime: raw outputs per window, and calibrated clip OVRL."""
    import onnxruntime as ort

    sess = ort.InferenceSession(_model_path("sig_bak_ovr.onnx"))
    rows, raw_max, ovrl_max = [], 0.0, 0.0
    for name, x in clips.items():
        segs = windows(x.float())
        ref = torch.from_numpy(sess.run(None, {"input_1": segs.numpy()})[0])
        with torch.no_grad():
            got = tdns.raw(segs)
            ovrl_t = float(tdns(x.float())["ovrl"])
        ovrl_o = official(x)["ovrl"]
        d_raw, d_ovrl = float((got - ref).abs().max()), abs(ovrl_t - ovrl_o)
        raw_max, ovrl_max = max(raw_max, d_raw), max(ovrl_max, d_ovrl)
        rows.append({"clip": name, "seconds": x.numel() / FS, "windows": segs.shape[0],
                     "max_abs_diff_raw": d_raw, "ovrl_onnxruntime": ovrl_o, "ovrl_torch": ovrl_t,
                     "abs_diff_ovrl": d_ovrl})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"clips": rows, "max_abs_diff_raw": raw_max, "max_abs_diff_ovrl": ovrl_max}


def score(y: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor | None, tdns: TorchDNSMOS) -> dict:
    import torchmos.functional as F

    y = y.detach()
    off = official(y)
    with torch.no_grad():
        ovrl_t = float(tdns(y)["ovrl"])
    row = {"distillmos": float(F.distillmos([y])), "dnsmos_ovrl": off["ovrl"], "dnsmos_ovrl_torch": ovrl_t,
           "dnsmos_sig": off["sig"], "dnsmos_bak": off["bak"], "p808_heldout": off["p808"],
           "pesq_wb": _pesq(clean, y), "si_sdr_db": _sisdr(clean, y)}
    if noisy is not None:
        change = (y - noisy).pow(2).sum()
        row["change_db"] = float(10 * torch.log10(change / noisy.pow(2).sum())) if change > 0 else None
    return row


def attack(arm: str, noisy: torch.Tensor, clean: torch.Tensor, tdns: TorchDNSMOS, steps: int, lr: float,
           every: int) -> dict:
    from torchmos.losses import MOSLoss

    dm_loss = MOSLoss("distillmos")
    x = noisy.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    nonfinite = 0

    def evaluate(step: int) -> dict:
        row = {"step": step, **score(x, clean, noisy, tdns)}
        print(json.dumps({"arm": arm, **row}), file=sys.stderr, flush=True)
        return row

    trace, losses = [evaluate(0)], []
    t = time.perf_counter()
    for step in range(1, steps + 1):
        opt.zero_grad()
        parts = {}
        if arm in ("distillmos", "ensemble"):
            parts["distillmos"] = dm_loss([x])
        if arm in ("dnsmos", "ensemble"):
            parts["dnsmos"] = 5.0 - tdns(x)["ovrl"]
        loss = sum(parts.values()) / len(parts)
        loss.backward()
        if not torch.isfinite(x.grad).all():  # sqrt(|X|^2) of an all-zero frame; never seen so far
            nonfinite += 1
            x.grad.nan_to_num_(0.0, 0.0, 0.0)
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
        losses.append({"step": step, "loss": loss.item(), **{f"loss_{k}": v.item() for k, v in parts.items()}})
        if step % every == 0 or step == steps:
            trace.append(evaluate(step))
    return {"arm": arm, "steps": steps, "lr": lr, "attack_seconds": time.perf_counter() - t,
            "nonfinite_grad_steps": nonfinite, "trace": trace, "losses": losses}


def _first_reaching(trace: list[dict], key: str, level: float) -> int | None:
    return next((r["step"] for r in trace if r[key] >= level), None)


def summarise(clean_scores: dict, runs: dict) -> dict:
    out = {}
    for arm, run in runs.items():
        first, last = run["trace"][0], run["trace"][-1]
        out[arm] = {
            "final": {k: last[k] for k in ("distillmos", "dnsmos_ovrl", "p808_heldout", "pesq_wb", "si_sdr_db",
                                           "change_db")},
            "gain": {k: last[k] - first[k] for k in ("distillmos", "dnsmos_ovrl", "p808_heldout", "pesq_wb",
                                                     "si_sdr_db")},
            "first_step_at_clean_level": {k: _first_reaching(run["trace"], k, clean_scores[k])
                                          for k in ("distillmos", "dnsmos_ovrl", "p808_heldout")},
        }
    return out


def clips_to_attack(which: list[str], seconds: float, snr: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from torchmos import audio, synth

    pairs = {}
    if "real" in which:
        if (SPEECH / "pesq_speech_bab_0dB.wav").is_file() and (SPEECH / "pesq_speech.wav").is_file():
            noisy, fs_n = audio.read(SPEECH / "pesq_speech_bab_0dB.wav")
            ref, fs_r = audio.read(SPEECH / "pesq_speech.wav")
            noisy = audio.resample(noisy, fs_n, FS).reshape(-1).float()
            ref = audio.resample(ref, fs_r, FS).reshape(-1).float()
            pairs["shared/data/speech/pesq_speech_bab_0dB.wav (real speech, babble at 0 dB) vs pesq_speech.wav"] = (
                noisy, ref)
        else:
            print(f"bench_mos_loss_ensemble: skipping the real recording: {SPEECH}/pesq_speech_bab_0dB.wav and "
                  "pesq_speech.wav are not on this machine (opt-in shared/data/speech, see its README).",
                  file=sys.stderr, flush=True)
    if "synth" in which:
        clean = synth.speech_like(seconds, seed=11)
        pairs[f"synth.speech_like({seconds:g}, seed=11) + pink noise at {snr:g} dB SNR"] = (
            synth.add_noise(clean, snr_db=snr, seed=11).clamp(-1, 1), clean)
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--clips", nargs="+", default=["real", "synth"], choices=["real", "synth"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=5, help="score every this many steps")
    ap.add_argument("--snr", type=float, default=5.0, help="generated clip: pink noise SNR (dB)")
    ap.add_argument("--seconds", type=float, default=3.0, help="generated clip: length")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parity-only", action="store_true", help="check the torch DNSMOS copy, attack nothing")
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args()
    _require()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from torchmos import synth

    tdns = TorchDNSMOS()
    pairs = clips_to_attack(args.clips, args.seconds, args.snr)
    check = {}
    for name, (noisy, ref) in pairs.items():
        check[f"{name} [noisy]"], check[f"{name} [clean]"] = noisy, ref
    for f in ("scoreq_ref.wav", "scoreq_opus.wav"):  # more real speech, longer than 3 s, when present
        if (SPEECH / f).is_file():
            from torchmos import audio

            x, fs = audio.read(SPEECH / f)
            check[f"shared/data/speech/{f}"] = audio.resample(x, fs, FS).reshape(-1).float()
    check["synth.speech_like(12.0, seed=3) + pink noise at 10 dB (longer than one window)"] = synth.add_noise(
        synth.speech_like(12.0, seed=3), snr_db=10.0, seed=3).clamp(-1, 1)
    result: dict = {"provenance": provenance(), "extra_versions": _versions(),
                    "dnsmos": {"model": "speechmos/dnsmos_models/sig_bak_ovr.onnx (DNSMOS P.835), onnx2torch",
                               "window_samples": WINDOW, "calibration_poly_highest_first": POLY,
                               "heldout": "speechmos/dnsmos_models/model_v8.onnx (DNSMOS P.808), onnxruntime"},
                    "threads": args.threads, "parity": parity(tdns, check)}
    if not args.parity_only:
        result.update({"steps": args.steps, "lr": args.lr, "every": args.every, "clips": {}})
        for name, (noisy, ref) in pairs.items():
            clean_scores = score(ref, ref, None, tdns)
            print(json.dumps({"clip": name, "clean": clean_scores}), file=sys.stderr, flush=True)
            runs = {arm: attack(arm, noisy, ref, tdns, args.steps, args.lr, args.every) for arm in args.arms}
            result["clips"][name] = {"clean_scores": clean_scores, "summary": summarise(clean_scores, runs),
                                     "arms": runs}
    result["wall_seconds"] = time.perf_counter() - t0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    brief = {k: v for k, v in result.items() if k not in ("provenance", "clips")}
    brief["summary"] = {name: c["summary"] for name, c in result.get("clips", {}).items()}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
