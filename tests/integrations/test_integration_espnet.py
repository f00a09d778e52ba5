"""ESPnet: the local/score_mos.sh stage on a generated Kaldi data dir, and MOS during training.

The stage runs as in an egs2 recipe (utils/parse_options.sh, ./cmd.sh's ${decode_cmd} /
${cuda_cmd}) and outside one (its built-in equivalents). Kaldi's utils/ and a GPU are not
here, so the recipe test uses stand-ins written below: a utils/parse_options.sh that
records its call, and a ${cuda_cmd} that records how it was called and runs the jobs on
the CPU. Scores are compared with torchmos.functional.
"""

from __future__ import annotations

import doctest
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("espnet2", reason="needs ESPnet: pip install -e '.[espnet]'")
kaldiio = pytest.importorskip("kaldiio", reason="needs kaldiio (installed with ESPnet)")

import yaml  # noqa: E402  (installed with ESPnet)

import torchmos.functional as F  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters import Scorer, espnet_scp  # noqa: E402
from torchmos.adapters import espnet as adapter  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "integrations" / "espnet" / "local"
STAGE = LOCAL / "score_mos.sh"
TOL = 1e-4

FLAC_TO_WAV = """\
import io, sys
import soundfile as sf
x, r = sf.read(sys.argv[1])
buf = io.BytesIO()
sf.write(buf, x, r, format="WAV", subtype="PCM_16")
sys.stdout.buffer.write(buf.getvalue())
"""

# Stand-in for Kaldi's utils/parse_options.sh (which a recipe's utils/ links to): it
# records the arguments it was given, then sets each "--name value".
PARSE_OPTIONS = """\
echo "$*" > utils/parse_options.called
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do printf -v "${1#--}" '%s' "$2"; shift 2; done
"""

# Stand-in for a GPU queue (queue.pl / slurm.pl) as ${cuda_cmd}: records its arguments,
# then runs the jobs here. There is no GPU on this machine, so each job's "--ngpu 1"
# becomes "--ngpu 0"; nothing else is changed.
FAKE_QUEUE = """\
#!/usr/bin/env bash
printf '%s\\n' "$@" > "$(dirname "$0")/cuda_cmd.args"
while [ "${1#-}" != "$1" ]; do shift 2; done
range=${1#JOB=}; log=$2; shift 2
for j in $(seq "${range%:*}" "${range#*:}"); do
    args=(); prev=
    for a in "$@"; do
        a=${a//JOB/$j}
        [ "$prev" = --ngpu ] && a=0
        args+=("$a"); prev=$a
    done
    "${args[@]}" > "${log//JOB/$j}" 2>&1 || exit 1
done
"""

FAKE_NVIDIA_SMI = """\
#!/usr/bin/env bash
echo "GPU 0: Stand-in GPU (UUID: GPU-0)"
echo "GPU 1: Stand-in GPU (UUID: GPU-1)"
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture(scope="module")
def datadir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict[str, int]]:
    """A Kaldi data dir: wav/flac files, a pipe entry, ark offsets; ids not in sorted order.

    Returns the dir, each utterance's waveform as ESPnet's readers will return it (after
    PCM quantisation), and its sample rate.
    """
    d = tmp_path_factory.mktemp("data")
    (d / "wav").mkdir()
    (d / "flac2wav.py").write_text(FLAC_TO_WAV)
    lines, wavs, rates = [], {}, {}

    def quantised(x: torch.Tensor) -> np.ndarray:
        return np.round(x.numpy() * 32767).astype(np.int16)

    x = quantised(synth.speech_like(1.0, seed=1))
    sf.write(d / "wav" / "s3.wav", x, 16000, subtype="PCM_16")
    lines.append(f"spk1-utt3 {d / 'wav' / 's3.wav'}")
    wavs["spk1-utt3"], rates["spk1-utt3"] = torch.from_numpy(x.astype(np.float32) / 32768), 16000

    x = quantised(synth.degrade(synth.speech_like(1.5, fs=8000, seed=2), 8000, "noise_5dB"))
    sf.write(d / "wav" / "s1.flac", x, 8000, subtype="PCM_16")
    lines.append(f"spk1-utt1 {d / 'wav' / 's1.flac'}")  # a plain flac at 8 kHz
    wavs["spk1-utt1"], rates["spk1-utt1"] = torch.from_numpy(x.astype(np.float32) / 32768), 8000

    x = quantised(synth.speech_like(1.25, fs=8000, seed=3))
    sf.write(d / "wav" / "p.flac", x, 8000, subtype="PCM_16")
    lines.append(f"spk2-pipe {sys.executable} {d / 'flac2wav.py'} {d / 'wav' / 'p.flac'} |")
    wavs["spk2-pipe"], rates["spk2-pipe"] = torch.from_numpy(x.astype(np.float32) / 32768), 8000

    arks = {"spk2-ark1": quantised(synth.degrade(synth.speech_like(1.2, seed=4), 16000, "clipping")),
            "spk0-ark2": quantised(synth.speech_like(1.1, seed=5))}
    kaldiio.save_ark(str(d / "data_wav.ark"), {k: (16000, v) for k, v in arks.items()}, scp=str(d / "ark.scp"))
    lines += (d / "ark.scp").read_text().splitlines()  # "utt /path/data_wav.ark:123"
    for k, v in arks.items():
        wavs[k], rates[k] = torch.from_numpy(v.astype(np.float32) / 32768), 16000

    (d / "wav.scp").write_text("\n".join(lines) + "\n")
    return d, wavs, rates


@pytest.fixture(scope="module")
def expected(datadir) -> dict[str, float]:
    _, wavs, rates = datadir
    return {u: float(F.distillmos(wavs[u], fs=rates[u])) for u in wavs}


def first_lines(datadir, tmp_path: Path, n: int) -> Path:
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(ln + "\n" for ln in (datadir[0] / "wav.scp").read_text().splitlines()[:n]))
    return scp


def run_stage(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if env is None:  # outside a recipe: no job runner from the caller's environment either
        env = {k: v for k, v in os.environ.items() if k not in ("decode_cmd", "cuda_cmd")}
    return subprocess.run(["bash", str(STAGE), "--python", sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def show_tts_result_sections(avg_result: Path) -> dict[str, str]:
    """What ESPnet's scripts/utils/show_tts_result.sh puts in RESULTS.md from an
    avg_result.txt: per line, a "## <heading>" section, the heading being the text before
    the first ':' and the value the next field with its spaces removed (cut -d: -f1/-f2)."""
    out = {}
    for line in avg_result.read_text().splitlines():
        fields = line.split(":")
        out[fields[0]] = fields[1].replace(" ", "")
    return out


def test_readers_return_what_was_written(datadir):
    d, wavs, rates = datadir
    for utt, entry in adapter.read_scp(d / "wav.scp").items():
        x, fs = adapter.load_entry(entry)
        assert fs == rates[utt]
        assert torch.equal(x, wavs[utt]), utt


def test_stage_writes_espnet_result_files(datadir, expected, tmp_path):
    """utt2pmos (sorted), avg_result.txt ("name: value") and result.txt, from two local jobs."""
    d, _, _ = datadir
    proc = run_stage("--nj", "2", str(d / "wav.scp"), str(tmp_path / "mos"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (tmp_path / "mos" / "utt2pmos").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(expected)
    got = {ln.split()[0]: float(ln.split()[1]) for ln in lines}
    for u in expected:
        assert got[u] == pytest.approx(expected[u], abs=TOL), u
    v = np.array(list(expected.values()))

    sections = show_tts_result_sections(tmp_path / "mos" / "avg_result.txt")
    assert list(sections) == ["distillmos"]
    assert float(sections["distillmos"]) == pytest.approx(v.mean(), abs=TOL)

    result = dict(ln.split(": ", 1) for ln in (tmp_path / "mos" / "result.txt").read_text().splitlines()
                  if not ln.startswith("#"))
    assert int(result["count"]) == len(v)
    assert float(result["mean"]) == pytest.approx(v.mean(), abs=1e-4)
    assert float(result["std"]) == pytest.approx(v.std(), abs=1e-4)
    assert float(result["min"].split()[0]) == pytest.approx(v.min(), abs=1e-4)
    assert float(result["max"].split()[0]) == pytest.approx(v.max(), abs=1e-4)

    # two jobs really ran, on the parts split_scp makes (contiguous, in order)
    logdir = tmp_path / "mos" / "logdir"
    want = adapter.split_scp(d / "wav.scp", 2, tmp_path / "split")
    for j, part in enumerate(want, 1):
        assert (logdir / f"wav.{j}.scp").read_text() == part.read_text()
        assert f"job {j}: model=distillmos device=cpu" in (logdir / f"score_mos.{j}.log").read_text()


def test_options_config_file_and_inference_args(datadir, expected, tmp_path):
    """--config (name=value lines, the command line wins), --inference_config (YAML for the
    scorer) and --inference_args (overriding it); "--inference-args" works as "_"."""
    scp = first_lines(datadir, tmp_path, 2)
    (tmp_path / "score.yaml").write_text("batch_size: 5\nnum_threads: 2\n")
    (tmp_path / "score.conf").write_text("nj=2\ninference_config=score.yaml\n")
    proc = run_stage("--config", "score.conf", "--nj", "1", "--inference-args", "--batch_size 1",
                     str(scp), "mos", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logdir = tmp_path / "mos" / "logdir"
    assert sorted(p.name for p in logdir.glob("score_mos.*.log")) == ["score_mos.1.log"]  # --nj 1 beat nj=2
    log = (logdir / "score_mos.1.log").read_text()
    assert "batch_size=1 num_threads=2" in log  # YAML's num_threads; --inference_args' batch_size
    assert "config=score.yaml" in log
    got = adapter.read_scores([tmp_path / "mos" / "utt2pmos"])
    assert got == pytest.approx({u: expected[u] for u in adapter.read_scp(scp)}, abs=TOL)


def test_option_errors(tmp_path, capsys):
    (tmp_path / "wav.scp").write_text("u /x.wav\n")
    for args, rc, message in [
        (["--nj=2"], 1, "must be of the form --name value, got '--nj=2'"),
        (["--no_such_option", "1"], 1, "invalid option --no_such_option"),
        (["--gpu_inference", "yes"], 1, 'expected "true" or "false": --gpu_inference yes'),
        (["--config", "missing.conf"], 1, "missing config 'missing.conf'"),
        (["--nj", "0"], 1, "--nj must be a positive integer"),
    ]:
        proc = run_stage(*args, "wav.scp", "out", cwd=tmp_path)
        assert proc.returncode == rc and message in proc.stdout + proc.stderr, (args, proc.stdout + proc.stderr)
    proc = run_stage("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "Usage:" in proc.stderr and "--gpu_inference" in proc.stderr
    proc = run_stage("wav.scp", cwd=tmp_path)
    assert proc.returncode == 2 and "Usage:" in proc.stderr
    # the scorer's YAML is checked as ESPnet's parsers check theirs
    (tmp_path / "bad.yaml").write_text("batch_sise: 4\n")
    with pytest.raises(SystemExit):
        adapter.main(["score", "--config", str(tmp_path / "bad.yaml"), "wav.scp", "out"])
    assert "unrecognized arguments: batch_sise" in capsys.readouterr().err
    # the shipped example config is one the scorer takes
    shipped = ROOT / "integrations" / "espnet" / "conf" / "score_mos.yaml"
    args = espnet_scp._score_parser().parse_args(["--config", str(shipped), "wav.scp", "out"])
    assert {k: getattr(args, k) for k in yaml.safe_load(shipped.read_text())} == yaml.safe_load(shipped.read_text())


def test_stage_in_a_recipe_runs_gpu_jobs_through_cuda_cmd(datadir, expected, tmp_path):
    """In an egs2 recipe dir: utils/parse_options.sh parses the options, ./cmd.sh's
    ${cuda_cmd} gets "--gpu 1 JOB=1:<GPUs> <log> ... --ngpu 1 --job JOB ...", one job per GPU."""
    recipe = tmp_path / "egs2" / "corpus" / "tts1"
    (recipe / "utils").mkdir(parents=True)
    (recipe / "utils" / "parse_options.sh").write_text(PARSE_OPTIONS)
    queue = executable(recipe / "fake_queue.sh", FAKE_QUEUE)
    executable(recipe / "decode_cmd.sh", "#!/usr/bin/env bash\necho 'decode_cmd was used' >&2\nexit 1\n")
    (recipe / "cmd.sh").write_text(f'export cuda_cmd="{queue}"\nexport decode_cmd="{recipe / "decode_cmd.sh"}"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    scp = first_lines(datadir, tmp_path, 3)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    proc = run_stage("--gpu_inference", "true", str(scp), "exp/decode/test/scoring/mos", cwd=recipe, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (recipe / "utils" / "parse_options.called").read_text().split()[:4] == [
        "--python", sys.executable, "--gpu_inference", "true"]
    args = (recipe / "cuda_cmd.args").read_text().splitlines()
    logdir = "exp/decode/test/scoring/mos/logdir"
    assert args[:4] == ["--gpu", "1", "JOB=1:2", f"{logdir}/score_mos.JOB.log"]  # two GPUs: two jobs
    command = args[4:]
    assert command[:3] == [sys.executable, str(LOCAL / "score_mos.py"), "score"]
    i = command.index("--ngpu")
    assert command[i:i + 4] == ["--ngpu", "1", "--job", "JOB"]  # each job picks its own GPU
    assert command[-2:] == [f"{logdir}/wav.JOB.scp", f"{logdir}/utt2pmos.JOB"]
    got = adapter.read_scores([recipe / "exp/decode/test/scoring/mos/utt2pmos"])
    assert got == pytest.approx({u: expected[u] for u in adapter.read_scp(scp)}, abs=TOL)


def test_job_device_one_gpu_per_job(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # run.pl on a 2-GPU machine
    assert [adapter.job_device(1, j) for j in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert adapter.job_device(0, 2) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a scheduler's job: its own GPU only
    assert adapter.job_device(1, 7) == "cuda:0"
    with pytest.raises(ValueError, match="counts from 1"):
        adapter.job_device(1, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA sees none"):
        adapter.job_device(1, 1)


def test_stage_fails_naming_the_bad_utterance(datadir, tmp_path):
    d, _, _ = datadir
    bad = tmp_path / "wav.scp"
    first = (d / "wav.scp").read_text().splitlines()[0]
    bad.write_text(f"{first}\nbroken-utt {tmp_path / 'missing.wav'}\n")
    proc = run_stage("--nj", "1", str(bad), str(tmp_path / "mos"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "broken-utt" in (tmp_path / "mos" / "logdir" / "score_mos.1.log").read_text()
    assert "broken-utt" in proc.stderr  # the failing log is shown
    assert not (tmp_path / "mos" / "utt2pmos").exists()


def test_split_is_contiguous_and_complete(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"u{i} /x/{i}.wav\n" for i in range(7)))
    parts = adapter.split_scp(scp, 3, tmp_path / "split")
    got = [p.read_text().splitlines() for p in parts]
    assert [len(g) for g in got] == [3, 2, 2]
    assert sum(got, []) == scp.read_text().splitlines()


def test_python_entry_point_split_and_merge(tmp_path, capsys):
    scp = tmp_path / "wav.scp"
    scp.write_text("b /x/b.wav\na /x/a.wav\nc /x/c.wav\n")
    assert adapter.main(["split", "--nj", "2", str(scp), str(tmp_path / "parts")]) == 0
    (tmp_path / "s1").write_text("b 3.0\na 2.0\n")
    (tmp_path / "s2").write_text("c 4.5\n")
    assert adapter.main(["merge", "--model", "m", "--expected", str(scp), str(tmp_path / "out"),
                         str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    assert (tmp_path / "out" / "utt2pmos").read_text() == "a 2.000000\nb 3.000000\nc 4.500000\n"
    assert show_tts_result_sections(tmp_path / "out" / "avg_result.txt") == {"m": "3.166667"}
    assert "mean: 3.1667" in (tmp_path / "out" / "result.txt").read_text()
    # an incomplete merge is refused
    assert adapter.main(["merge", "--expected", str(scp), str(tmp_path / "out2"), str(tmp_path / "s1")]) == 1
    assert "no score" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot head"):
        adapter.write_results({"a": 1.0}, tmp_path / "out3", model="a: b")


def test_reference_model_pairs_utterances_by_id(datadir, tmp_path):
    """--reference with a reference model (a tiny random-weight SCOREQ in the official format)."""
    from torchmos.metrics.scoreq import ScoreqRef
    from torchmos.models import scoreq

    tiny = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2, intermediate_size=96,
                num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
    ckpt = tmp_path / "fixed_nmr_telephone.pt"
    torch.manual_seed(0)
    torch.save(scoreq.ScoreqModel("ref", **tiny).to_official_state_dict(), ckpt)

    d, wavs, rates = datadir
    utts = ["spk1-utt3", "spk2-ark1", "spk0-ark2"]  # all 16 kHz; references listed in another order
    scp, ref_scp = tmp_path / "wav.scp", tmp_path / "ref.scp"
    entries = adapter.read_scp(d / "wav.scp")
    scp.write_text("".join(f"{u} {entries[u]}\n" for u in utts))
    clean = {u: synth.speech_like(1.0, seed=40 + i) for i, u in enumerate(utts)}
    for u, x in clean.items():
        sf.write(tmp_path / f"{u}.wav", x.numpy(), 16000, subtype="FLOAT")
    ref_scp.write_text("".join(f"{u} {tmp_path / f'{u}.wav'}\n" for u in reversed(utts)))

    got = adapter.score_scp(scp, model="scoreq-ref-natural", reference=ref_scp, checkpoint=str(ckpt), **tiny)
    metric = ScoreqRef(checkpoint=ckpt, backbone_config=tiny, per_utterance=True)
    metric.update([wavs[u] for u in utts], [clean[u] for u in utts])
    want = metric.compute()["scores"]
    assert list(got) == utts
    assert [got[u] for u in utts] == pytest.approx(want.tolist(), abs=TOL)
    with pytest.raises(ValueError, match="reference"):
        adapter.score_scp(scp, model="scoreq-ref-natural", checkpoint=str(ckpt), **tiny)
    with pytest.raises(ValueError, match="no-reference"):
        adapter.score_scp(scp, model="distillmos", reference=ref_scp)


# ----------------------------------------------------------------------------- training


def test_mos_criterion_in_a_real_enhancement_model():
    """Validation-only MOS in ESPnetEnhancementModel stats, not in its state_dict."""
    from espnet2.enh.decoder.conv_decoder import ConvDecoder
    from espnet2.enh.encoder.conv_encoder import ConvEncoder
    from espnet2.enh.espnet_model import ESPnetEnhancementModel
    from espnet2.enh.loss.criterions.time_domain import SISNRLoss
    from espnet2.enh.loss.wrappers.fixed_order import FixedOrderSolver
    from espnet2.enh.separator.rnn_separator import RNNSeparator

    torch.manual_seed(0)
    wrappers = [FixedOrderSolver(SISNRLoss(), weight=1.0),
                FixedOrderSolver(adapter.MOSCriterion(model="distillmos", fs=16000), weight=0.0)]
    model = ESPnetEnhancementModel(ConvEncoder(channel=16, kernel_size=16, stride=8),
                                   RNNSeparator(input_dim=16, num_spk=1, rnn_type="blstm", layer=1, unit=16),
                                   ConvDecoder(channel=16, kernel_size=16, stride=8), None, wrappers)
    assert all(not k.startswith("loss_wrappers.1") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) < 100_000

    clean = torch.stack([synth.speech_like(1.0, seed=s) for s in (11, 12)])
    noisy = synth.add_noise(clean, 5.0, seed=1)
    lengths = torch.tensor([16000, 16000])
    model.train()
    _, stats, _ = model(noisy, lengths, speech_ref1=clean)
    assert "mos" not in stats  # only_for_test: never computed while training
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(noisy, lengths, speech_ref1=clean)
        enhanced = model.forward_enhance(noisy, lengths)[0][0]
    assert float(stats["mos"]) == pytest.approx(float(F.distillmos(enhanced).mean()), abs=TOL)


ENH_CONFIG = """\
encoder: conv
encoder_conf: {channel: 8, kernel_size: 16, stride: 8}
decoder: conv
decoder_conf: {channel: 8, kernel_size: 16, stride: 8}
separator: rnn
separator_conf: {rnn_type: blstm, num_spk: 1, nonlinear: relu, layer: 1, unit: 8}
criterions:
  - name: si_snr
    conf: {eps: 1.0e-7}
    wrapper: fixed_order
    wrapper_conf: {weight: 1.0}
  - name: torchmos_mos
    conf: {model: distillmos, fs: 16000}
    wrapper: fixed_order
    wrapper_conf: {weight: 0.0}
optim: adam
max_epoch: 1
batch_type: unsorted
batch_size: 2
num_workers: 0
best_model_criterion:
  - [valid, mos, max]
keep_nbest_models: 1
"""


def test_enh_training_through_the_python_hook(tmp_path):
    """enh.sh's own call, "${python} -m espnet2.bin.enh_train ...", with
    python=local/torchmos_python.sh: a real (tiny) training run that logs valid/mos and
    keeps valid.mos.best.pth; other calls pass through to Python unchanged."""
    hook = LOCAL / "torchmos_python.sh"
    env = {**os.environ, "TORCHMOS_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(hook), "-c", "import sys; print(sys.argv[1:])", "a b"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "['a b']", proc.stderr

    data = tmp_path / "data"
    data.mkdir()
    opts = []
    for split, seeds in (("train", (1, 2)), ("valid", (3, 4))):
        wav, spk1, shape = [], [], []
        for k in seeds:
            clean = synth.speech_like(0.5, seed=k)
            sf.write(data / f"{k}_clean.wav", clean.numpy(), 16000)
            sf.write(data / f"{k}_noisy.wav", synth.add_noise(clean, 5.0, seed=k).numpy(), 16000)
            wav.append(f"u{k} {data / f'{k}_noisy.wav'}\n")
            spk1.append(f"u{k} {data / f'{k}_clean.wav'}\n")
            shape.append(f"u{k} 8000\n")
        for name, lines in (("wav.scp", wav), ("spk1.scp", spk1), ("shape", shape)):
            (data / f"{split}_{name}").write_text("".join(lines))
        opts += [f"--{split}_data_path_and_name_and_type", f"{data / f'{split}_wav.scp'},speech_mix,sound",
                 f"--{split}_data_path_and_name_and_type", f"{data / f'{split}_spk1.scp'},speech_ref1,sound",
                 f"--{split}_shape_file", str(data / f"{split}_shape")]
    (tmp_path / "train.yaml").write_text(ENH_CONFIG)
    proc = subprocess.run(["bash", str(hook), "-m", "espnet2.bin.enh_train", "--config", "train.yaml",
                           "--ngpu", "0", "--output_dir", "exp", "--use_matplotlib", "false",
                           "--use_tensorboard", "false", *opts],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = re.search(r"1epoch results: .*\[valid\] (.*)", proc.stdout + proc.stderr)
    assert results, proc.stderr[-3000:]
    mos = float(re.search(r"\bmos=([0-9.]+)", results.group(1)).group(1))
    assert 1.0 <= mos <= 5.0
    assert (tmp_path / "exp" / "valid.mos.best.pth").exists()
    state = torch.load(tmp_path / "exp" / "valid.mos.best.pth", map_location="cpu")
    assert not any(k.startswith("loss_wrappers") for k in state)  # the predictor is not saved


def tiny_vits():
    from espnet2.gan_tts.vits import VITS

    norm = {"use_weight_norm": True, "use_spectral_norm": False, "bias": True,
            "nonlinear_activation": "LeakyReLU", "nonlinear_activation_params": {"negative_slope": 0.1}}
    generator = dict(
        hidden_channels=8, spks=-1, global_channels=-1, segment_size=8,
        text_encoder_attention_heads=2, text_encoder_ffn_expand=2, text_encoder_blocks=1,
        text_encoder_positionwise_layer_type="conv1d", text_encoder_positionwise_conv_kernel_size=1,
        use_macaron_style_in_text_encoder=False, use_conformer_conv_in_text_encoder=False,
        decoder_kernel_size=7, decoder_channels=16, decoder_upsample_scales=[16, 16],
        decoder_upsample_kernel_sizes=[32, 32], decoder_resblock_kernel_sizes=[3, 5],
        decoder_resblock_dilations=[[1, 3], [1, 3]], posterior_encoder_layers=2,
        posterior_encoder_stacks=1, flow_flows=2, flow_layers=2,
        stochastic_duration_predictor_flows=2, stochastic_duration_predictor_dds_conv_layers=3,
    )
    discriminator = dict(
        scales=1, periods=[2, 3], follow_official_norm=False,
        scale_discriminator_params={"in_channels": 1, "out_channels": 1, "kernel_sizes": [15, 41, 5, 3],
                                    "channels": 16, "max_downsample_channels": 32, "max_groups": 16,
                                    "downsample_scales": [2, 2, 1], **norm},
        period_discriminator_params={"in_channels": 1, "out_channels": 1, "kernel_sizes": [5, 3],
                                     "channels": 16, "downsample_scales": [3, 1],
                                     "max_downsample_channels": 32, **norm},
    )
    mel = dict(fs=16000, n_fft=128, hop_length=32, win_length=None, window="hann", n_mels=5, fmin=0, fmax=None)
    return VITS(idim=10, odim=5, sampling_rate=16000, generator_params=generator,
                discriminator_params=discriminator, mel_loss_params=mel)


def test_vits_generator_predicted_mos_from_torchmos():
    """ESPnet's own VITS logs stats["generator_predicted_mos"] in its generator turn when
    plot_pred_mos is on; with a torchmos Scorer as its predictor (a plain attribute, not a
    submodule) the value is torchmos' mean score of the generated segments."""

    class Recording(Scorer):
        def __call__(self, preds, fs, *args, **kwargs):
            self.seen.append((preds.detach().clone(), fs))
            return super().__call__(preds, fs, *args, **kwargs)

    torch.manual_seed(0)
    vits = tiny_vits()
    scorer = Recording("distillmos")
    scorer.seen = []
    vits.plot_pred_mos = True
    vits.predictor = scorer
    assert not any(k.startswith("predictor") for k in vits.state_dict())

    text, feats = torch.randint(0, 10, (2, 5)), torch.randn(2, 16, 5)
    batch = dict(text=text, text_lengths=torch.tensor([5, 4]), feats=feats, feats_lengths=torch.tensor([16, 12]),
                 speech=torch.randn(2, 16 * 256) * 0.1, speech_lengths=torch.tensor([16, 12]) * 256)
    vits.eval()
    with torch.no_grad():
        generator = vits(**batch, forward_generator=True)["stats"]
        discriminator = vits(**batch, forward_generator=False)["stats"]
    assert len(scorer.seen) == 1
    segments, fs = scorer.seen[0]
    assert fs == 16000 and segments.shape == (2, 8 * 256)
    assert float(generator["generator_predicted_mos"]) == pytest.approx(float(F.distillmos(segments).mean()),
                                                                        abs=TOL)
    assert not any("predicted_mos" in k for k in discriminator)


def test_mos_monitor_scores_unpadded_and_stays_out_of_modules():
    clips = [synth.speech_like(1.0, seed=21), synth.speech_like(0.75, seed=22)]
    wav, n = audio.pad_batch(clips)
    wav[1, n[1]:] = 0.5  # padding must not be scored
    monitor = adapter.MOSMonitor("distillmos", fs=16000)
    assert float(monitor(wav.unsqueeze(1), n)) == pytest.approx(float(F.distillmos(clips).mean()), abs=TOL)

    class Generator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.mos_monitor = monitor

    g = Generator()
    assert list(g.state_dict()) == ["proj.weight", "proj.bias"]


def test_register_criterion_reaches_both_enhancement_tasks():
    from espnet2.tasks import enh, enh_tse

    adapter.register_criterion()
    assert enh.criterion_choices.get_class("torchmos_mos") is adapter.MOSCriterion
    assert enh_tse.criterion_choices.get_class("torchmos_mos") is adapter.MOSCriterion


@pytest.mark.parametrize("module", [adapter, espnet_scp], ids=["espnet", "espnet_scp"])
def test_docstring_examples_run(module):
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0 and res.failed == 0, res
