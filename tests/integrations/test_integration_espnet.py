"""ESPnet: the local/score_mos.sh stage on a generated Kaldi data dir, and MOS during validation."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("espnet2", reason="needs ESPnet: pip install -e '.[integrations]'")
kaldiio = pytest.importorskip("kaldiio", reason="needs kaldiio (installed with ESPnet)")

import torchmos.functional as F  # noqa: E402
from torchmos import audio, synth  # noqa: E402
from torchmos.adapters import espnet as adapter  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "integrations" / "espnet" / "local" / "score_mos.sh"
TOL = 1e-4

FLAC_TO_WAV = """\
import io, sys
import soundfile as sf
x, r = sf.read(sys.argv[1])
buf = io.BytesIO()
sf.write(buf, x, r, format="WAV", subtype="PCM_16")
sys.stdout.buffer.write(buf.getvalue())
"""


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


def run_stage(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(STAGE), "--python", sys.executable, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_readers_return_what_was_written(datadir):
    d, wavs, rates = datadir
    for utt, entry in adapter.read_scp(d / "wav.scp").items():
        x, fs = adapter.load_entry(entry)
        assert fs == rates[utt]
        assert torch.equal(x, wavs[utt]), utt


def test_stage_writes_sorted_utt2mos_and_result(datadir, expected, tmp_path):
    d, _, _ = datadir
    proc = run_stage("--nj", "2", str(d / "wav.scp"), str(tmp_path / "mos"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (tmp_path / "mos" / "utt2mos").read_text().splitlines()
    utts = [ln.split()[0] for ln in lines]
    assert utts == sorted(expected)
    got = {ln.split()[0]: float(ln.split()[1]) for ln in lines}
    for u in expected:
        assert got[u] == pytest.approx(expected[u], abs=TOL), u
    # two jobs really ran, on contiguous parts
    logdir = tmp_path / "mos" / "logdir"
    assert (logdir / "wav.1.scp").read_text().count("\n") == 3
    assert (logdir / "wav.2.scp").read_text().count("\n") == 2
    result = dict(ln.split(": ", 1) for ln in (tmp_path / "mos" / "result.txt").read_text().splitlines()
                  if not ln.startswith("#"))
    v = np.array(list(expected.values()))
    assert int(result["count"]) == len(v)
    assert float(result["mean"]) == pytest.approx(v.mean(), abs=1e-4)
    assert float(result["std"]) == pytest.approx(v.std(), abs=1e-4)
    assert float(result["min"].split()[0]) == pytest.approx(v.min(), abs=1e-4)
    assert float(result["max"].split()[0]) == pytest.approx(v.max(), abs=1e-4)


def test_stage_through_a_kaldi_style_cmd(datadir, expected, tmp_path):
    """--cmd "run.pl": JOB=1:N <log> <command with JOB>, as Kaldi's runners are called."""
    d, _, _ = datadir
    runpl = tmp_path / "run.pl"
    runpl.write_text(
        "#!/usr/bin/env bash\n"
        "# minimal stand-in for utils/run.pl: JOB=a:b log cmd...\n"
        'range=${1#JOB=}; log=$2; shift 2\n'
        'for j in $(seq ${range%:*} ${range#*:}); do\n'
        '  args=(); for a in "$@"; do args+=("${a//JOB/$j}"); done\n'
        '  "${args[@]}" > "${log//JOB/$j}" 2>&1 || exit 1\n'
        "done\n"
    )
    runpl.chmod(runpl.stat().st_mode | stat.S_IEXEC)
    head = tmp_path / "wav.scp"
    head.write_text("".join(ln + "\n" for ln in (d / "wav.scp").read_text().splitlines()[:2]))
    proc = run_stage("--nj", "1", "--cmd", str(runpl), str(head), str(tmp_path / "mos"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = adapter.read_scores([tmp_path / "mos" / "utt2mos"])
    assert sorted(got) == sorted(adapter.read_scp(head))
    for u, s in got.items():
        assert s == pytest.approx(expected[u], abs=TOL)
    assert (tmp_path / "mos" / "logdir" / "score_mos.1.log").exists()


def test_stage_fails_naming_the_bad_utterance(datadir, tmp_path):
    d, _, _ = datadir
    bad = tmp_path / "wav.scp"
    first = (d / "wav.scp").read_text().splitlines()[0]
    bad.write_text(f"{first}\nbroken-utt {tmp_path / 'missing.wav'}\n")
    proc = run_stage("--nj", "1", str(bad), str(tmp_path / "mos"), cwd=tmp_path)
    assert proc.returncode != 0
    log = (tmp_path / "mos" / "logdir" / "score_mos.1.log").read_text()
    assert "broken-utt" in log
    assert not (tmp_path / "mos" / "utt2mos").exists()


def test_usage_and_reference_check(datadir, tmp_path):
    d, _, _ = datadir
    proc = run_stage(str(d / "wav.scp"), cwd=tmp_path)
    assert proc.returncode != 0 and "Usage" in proc.stderr
    with pytest.raises(ValueError, match="no-reference"):
        adapter.score_scp(d / "wav.scp", model="distillmos", reference=d / "wav.scp")


def test_split_is_contiguous_and_complete(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"u{i} /x/{i}.wav\n" for i in range(7)))
    parts = adapter.split_scp(scp, 3, tmp_path / "split")
    got = [p.read_text().splitlines() for p in parts]
    assert [len(g) for g in got] == [3, 2, 2]
    assert sum(got, []) == scp.read_text().splitlines()


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


def test_python_entry_point_split_and_merge(tmp_path, capsys):
    scp = tmp_path / "wav.scp"
    scp.write_text("b /x/b.wav\na /x/a.wav\nc /x/c.wav\n")
    assert adapter.main(["split", "--nj", "2", str(scp), str(tmp_path / "parts")]) == 0
    (tmp_path / "s1").write_text("b 3.0\na 2.0\n")
    (tmp_path / "s2").write_text("c 4.0\n")
    assert adapter.main(["merge", "--model", "m", "--expected", str(scp), str(tmp_path / "out"),
                         str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    assert (tmp_path / "out" / "utt2mos").read_text() == "a 2.000000\nb 3.000000\nc 4.000000\n"
    assert "mean: 3.0000" in (tmp_path / "out" / "result.txt").read_text()
    # an incomplete merge is refused
    assert adapter.main(["merge", "--expected", str(scp), str(tmp_path / "out2"), str(tmp_path / "s1")]) == 1
    assert "no score" in capsys.readouterr().err


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
