"""``torchmos score`` over a folder of short files: does it hide its reading behind the model?

    python benchmarks/bench_cli.py                              # 192 files, 2 rounds, RSS over 10,000
    python benchmarks/bench_cli.py --files 192 --rounds 2 --rss-files 10000 --json benchmarks/results/cli.json
    python benchmarks/bench_cli.py --setting avx2 --json benchmarks/results/cli_avx2.json   # the common x86 CPU

Everything is measured side by side in one run, the commands interleaved round by round
(so a change of load hits them alike), on a generated corpus of 1-6 s speech-like files
at 16, 22.05, 24, 44.1 and 48 kHz (16-bit WAV) in a temporary folder:

1. **Against a plain loop** (process start included for both): the ``torchmos score``
   command, and a Python script that reads each file with soundfile, resamples it to
   16 kHz with ``torchaudio.transforms.Resample`` (what the package's own file inference
   uses; ``torchaudio.functional.resample`` differs from it by a few 1e-6, which moves
   DistillMOS by up to 1e-3) and scores it with the reference ``distillmos`` package, one
   file at a time (what one writes without torchmos). Ratio = loop / CLI (target >= 1.8).
   Both pay the same start-up (importing torch, timed too), so the ratio grows
   with the number of files towards the model's own speed-up; ``--files`` sets it (192).
   The two sets of scores are compared (max |difference|).
2. **I/O hidden?** In one process with the model already loaded: ``torchmos.cli.main``
   over the folder with 0, 1 and 2 reading workers, against the model alone on the same
   clips read beforehand, in the CLI's batches. Ratio = CLI / model (target <= 1.10).
3. **torchrun**: ``torchrun --nproc-per-node=2 --no-python torchmos score`` against the
   one-process command (process start included; CPU ranks, one thread each).
4. **Memory over many files**: ``torchmos score`` over a list of tiny files (0.3 s, 16
   and 44.1 kHz, batches of 32), its resident size sampled every 0.2 s from /proc while
   the output grows: the most it grew from the 100th row until the last row was
   written, of the main process and of it with its reading workers. Twice: with DistillMOS over ``--rss-model-files`` files
   (1,000: the model costs a 7.68 s clip per file however short it is, so 10,000 would
   take the better part of an hour), and over ``--rss-files`` files (10,000) with the
   model call replaced by each clip's log energy (``STAND_IN``): every other part of the
   command (finding the files, the reading workers and their queues, the writer, the
   summary, the progress bar) runs as it is, so that run measures the command's own
   memory per file, which is what could grow with the number of files.

Threads: each process uses torch's default (one per core); torchrun gives its ranks one.
``--setting avx2`` runs every process (this one and the commands) with the caps of
``benchmarks/cpu_settings.py``, as on an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402
from cpu_settings import SETTINGS, cpu_flags, reexec_under, wait_policy  # noqa: E402

from torchmos import audio, synth  # noqa: E402

PY = sys.executable
TORCHMOS = str(Path(PY).with_name("torchmos"))
RATES = [16000, 22050, 24000, 44100, 48000]

PLAIN_LOOP = r"""
import csv, sys
from pathlib import Path
import soundfile as sf
import torch, torchaudio
from distillmos import ConvTransformerSQAModel
model = ConvTransformerSQAModel().eval()
resamplers = {}  # the package's own file inference resamples with transforms.Resample
with open(sys.argv[2], "w", newline="") as out, torch.no_grad():
    w = csv.writer(out)
    w.writerow(["path", "score"])
    for f in sorted(Path(sys.argv[1]).glob("*.wav")):
        x, sr = sf.read(f, dtype="float32")
        x = torch.from_numpy(x)
        if sr != 16000:
            if sr not in resamplers:
                resamplers[sr] = torchaudio.transforms.Resample(sr, 16000)
            x = resamplers[sr](x)
        w.writerow([str(f), float(model(x[None]).reshape(-1)[0])])
"""


def make_corpus(d: Path, n: int, lo: float = 1.0, hi: float = 6.0) -> None:
    g = torch.Generator().manual_seed(0)
    kinds = list(synth.DEGRADATIONS)
    for i in range(n):
        sec = lo + (hi - lo) * float(torch.rand(1, generator=g))
        fs = RATES[i % len(RATES)]
        x = synth.degrade(synth.speech_like(sec, fs, seed=i), fs, kinds[i % len(kinds)], seed=i)
        sf.write(d / f"u{i:05d}.wav", x.clamp(-1, 1).numpy(), fs, subtype="PCM_16")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


_WARMED: list[bool] = []


def in_process(folder: Path, rounds: int, batch: int, workers: list[int]) -> dict[str, list[float]]:
    """Model alone on pre-read clips vs cli.main with N workers, same process, model loaded."""
    from torchmos import cli, functional

    model = functional.get_model("distillmos")
    entries = audio.find_audio([folder])
    clips = [audio.prepare([e.load(target_fs=16000).samples], 16000, 16000)[0] for e in entries]
    out = Path(tempfile.mkdtemp()) / "s.csv"

    def score(w: int) -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the summary
            rc = cli.main(["score", str(folder), "-o", str(out), "-q", "--batch-size", str(batch), "--workers", str(w)])
        assert rc == 0, rc
        return time.perf_counter() - t0

    def alone() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(clips), batch):
                model(clips[i : i + batch])
        return time.perf_counter() - t0

    if not _WARMED:  # one-time costs (allocations, filters, the loaded model) out of the timings
        alone(), score(0)
        _WARMED.append(True)
    times: dict[str, list[float]] = {"model alone": [], **{f"cli --workers {w}": [] for w in workers}}
    for _ in range(rounds):
        times["model alone"].append(alone())
        for w in workers:
            times[f"cli --workers {w}"].append(score(w))
    return times


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


STAND_IN = r"""
import sys, torch
from torchmos import cli, functional

class Energy(torch.nn.Module):  # the pipeline alone: each clip's log mean square, not a MOS
    def forward(self, clips):
        return torch.stack([c.pow(2).mean().add(1e-12).log10() for c in clips])

functional.get_model = lambda *a, **k: Energy()
sys.exit(cli.main(sys.argv[1:]))
"""


def tiny_files(d: Path, n: int) -> list[Path]:
    """``n`` files of 0.3 s at 16 and 44.1 kHz: 194 different clips, written over and over."""
    d.mkdir(exist_ok=True)
    clips: dict[tuple[int, int], object] = {}
    paths = []
    for i in range(n):
        key = ((16000, 44100)[i % 2], i % 97)
        if key not in clips:
            clips[key] = synth.speech_like(0.3, key[0], seed=key[1]).numpy()
        p = d / f"t{i:05d}.wav"
        sf.write(p, clips[key], key[0], subtype="PCM_16")
        paths.append(p)
    return paths


def rss_run(cmd: list[str], files: list[Path], workdir: Path, tag: str) -> dict[str, object]:
    """Run ``cmd score LIST -o OUT -q --batch-size 32``; sample its resident size as rows come."""
    n = len(files)
    lst = workdir / f"{tag}.txt"
    lst.write_text("".join(f"{p}\n" for p in files))
    out = workdir / f"{tag}.jsonl"
    proc = subprocess.Popen([*cmd, "score", str(lst), "-o", str(out), "-q", "--batch-size", "32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []  # (rows, main kB, main + workers kB)
    t0 = time.perf_counter()
    while proc.poll() is None:
        rows = out.read_bytes().count(b"\n") if out.exists() else 0
        main = rss_kb(proc.pid)
        samples.append((rows, main, main + sum(rss_kb(c) for c in children(proc.pid))))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"RSS run failed ({proc.returncode}):\n{err[-3000:]}")
    start = next(i for i, s in enumerate(samples) if s[0] >= 100)
    later = [s for s in samples[start:] if s[1] > 0 and s[0] < n]  # from row 100 until the last row
    at100, last = samples[start], later[-1]
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    return {"files": n, "wall_s": round(wall, 1), "rows_at_start": at100[0], "rows_at_end": last[0],
            "rss_main_mb_at_start": mb(at100[1]), "rss_main_mb_at_end": mb(last[1]),
            "growth_main_mb": mb(max(s[1] for s in later) - at100[1]),  # the most it grew at any time
            "rss_with_workers_mb_at_start": mb(at100[2]), "rss_with_workers_mb_at_end": mb(last[2]),
            "growth_with_workers_mb": mb(max(s[2] for s in later) - at100[2]),
            "trace_rows_main_mb": [(s[0], mb(s[1])) for s in samples[start :: max(1, len(samples[start:]) // 20)]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rss-files", type=int, default=10000,
                    help="files for the memory run of the reading pipeline (0 skips it)")
    ap.add_argument("--rss-model-files", type=int, default=1000,
                    help="files for the memory run with the DistillMOS model (0 skips it)")
    ap.add_argument("--no-torchrun", action="store_true")
    ap.add_argument("--setting", default="native", choices=list(SETTINGS),
                    help="CPU setting of every process (benchmarks/cpu_settings.py; avx2: the common x86 CPU)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    reexec_under(args.setting)  # before anything is measured; torch reads the caps at import
    where = provenance()
    print(f"CPU setting {args.setting} {SETTINGS[args.setting]}: torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}; OMP_WAIT_POLICY {wait_policy()}; CPU flags {' '.join(cpu_flags())}")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    folder = work / "corpus"
    folder.mkdir()
    make_corpus(folder, args.files)
    seconds = sum(sf.info(f).duration for f in folder.glob("*.wav"))
    env1 = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmds = {
        "torchmos score (default)": [TORCHMOS, "score", str(folder), "-o", str(work / "cli.csv"), "-q",
                                     "--batch-size", str(args.batch_size)],
        "plain loop (soundfile + distillmos)": [PY, "-c", PLAIN_LOOP, str(folder), str(work / "loop.csv")],
        "python -c 'import torch' (the start-up both pay)": [PY, "-c", "import torch"],
    }
    if not args.no_torchrun:
        cmds["torchrun --nproc-per-node=2 torchmos score"] = [
            PY, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29581", "--no-python",
            *cmds["torchmos score (default)"][:4], str(work / "tr.csv"), "-q", "--batch-size", str(args.batch_size)]
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    inproc: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, cmd in cmds.items():
            wall[name].append(timed(cmd, env1))
        for k, v in in_process(folder, 1, args.batch_size, [0, 1, 2]).items():
            inproc.setdefault(k, []).extend(v)  # (the model is loaded once: it is cached)
    med = {k: statistics.median(v) for k, v in {**wall, **inproc}.items()}
    import csv

    with open(work / "cli.csv", newline="") as f:
        ours = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    with open(work / "loop.csv", newline="") as f:
        theirs = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    max_diff = max(abs(ours[p] - theirs[p]) for p in theirs)
    tr_diff = None
    if not args.no_torchrun:
        with open(work / "tr.csv", newline="") as f:
            merged = [(r["path"], float(r["score"])) for r in csv.DictReader(f)]
        assert [p for p, _ in merged] == list(ours), "torchrun's merged rows are not the one-process rows"
        tr_diff = max(abs(s - ours[p]) for p, s in merged)
    ratios = {"plain_loop_over_cli": med["plain loop (soundfile + distillmos)"] / med["torchmos score (default)"],
              **{f"cli_workers_{w}_over_model": med[f"cli --workers {w}"] / med["model alone"] for w in (0, 1, 2)}}
    if not args.no_torchrun:
        ratios["one_process_over_torchrun_2"] = (med["torchmos score (default)"]
                                                 / med["torchrun --nproc-per-node=2 torchmos score"])
    print(f"{args.files} files, {seconds:.0f} s of audio at {sorted(RATES)} Hz, batch {args.batch_size}, "
          f"{args.rounds} round(s); median wall times:")
    for k, v in med.items():
        print(f"  {k:<45} {v:7.2f} s")
    for k, v in ratios.items():
        print(f"  {k:<45} {v:7.2f}")
    print(f"  max |torchmos - distillmos package| over the files: {max_diff:.2e}")
    if tr_diff is not None:
        print(f"  max |torchrun merged - one process|: {tr_diff:.2e} (same rows, same order)")
    rss = {}
    tiny = tiny_files(work / "tiny", max(args.rss_files, args.rss_model_files))
    if args.rss_model_files:
        rss["distillmos"] = rss_run([TORCHMOS], tiny[: args.rss_model_files], work, "rss-model")
    if args.rss_files:
        rss["pipeline"] = rss_run([PY, "-c", STAND_IN], tiny[: args.rss_files], work, "rss-pipeline")
    for what, r in rss.items():
        print(f"  RSS, {what}, rows {r['rows_at_start']} -> {r['rows_at_end']}: main {r['rss_main_mb_at_start']} -> "
              f"{r['rss_main_mb_at_end']} MB (growth {r['growth_main_mb']} MB); with its workers "
              f"{r['rss_with_workers_mb_at_start']} -> {r['rss_with_workers_mb_at_end']} MB "
              f"(growth {r['growth_with_workers_mb']} MB); {r['wall_s']} s")
    shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - started
    print(f"benchmark took {took:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "provenance": where, "setting": {"name": args.setting, "env": SETTINGS[args.setting],
                                             "capability": torch.backends.cpu.get_cpu_capability(),
                                             "OMP_WAIT_POLICY": wait_policy()},
            "files": args.files, "audio_s": round(seconds, 1), "rates": RATES,
            "batch_size": args.batch_size, "rounds": args.rounds,
            "wall_s": {k: [round(x, 3) for x in v] for k, v in {**wall, **inproc}.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "max_abs_diff_vs_distillmos_package": max_diff, "max_abs_diff_torchrun_vs_one_process": tr_diff, "rss": rss or None, "benchmark_s": round(took, 1),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
