"""The malformed-input suite: every bad input gets an error a user can act on, and stays so.

Each case goes through the Python API (``torchmos.functional.distillmos`` and the
``DistillMOS`` metric's ``update``) or through the command line (``torchmos score``, run
in-process), and asserts that the message names the clip (``preds[1]``) or the file (its
path; a wav.scp pipe entry by its utterance id) and says what is wrong. On the command
line, a bad file is reported and skipped while the good files of the same run are still
scored (exit status 1); a wrong command line scores nothing and exits with status 2.
"""

from __future__ import annotations

import csv
import re
import shlex
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import torchmos.functional as F
from torchmos import DistillMOS, cli, synth
from torchmos.audio import AudioError, SilentAudioWarning

pytestmark = pytest.mark.usefixtures("one_thread")

FS = 16000
N = 4000  # 0.25 s at 16 kHz: above DistillMOS' 0.1 s minimum, small enough to be quick


def good(seed: int = 0, n: int = N) -> torch.Tensor:
    return synth.speech_like(n / FS, FS, seed=seed)


def batch2() -> torch.Tensor:
    return torch.stack([good(0), good(1)])


def full(value: float, n: int = N) -> torch.Tensor:
    return torch.full((n,), value)


# ============================================================================ API

# (make the inputs, who the message must name, what it must say is wrong)
CLIP_CASES = [
    # empty and too short
    pytest.param(lambda: dict(preds=[good(), torch.zeros(0)]), "preds[1]", r"empty", id="empty-clip"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, 0]), "preds[1]", r"empty", id="zero-length-row"),
    pytest.param(lambda: dict(preds=[good(), good(n=800)]), "preds[1]",
                 r"0\.050 s .*shorter than .*minimum of 0\.1 s", id="too-short-clip"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, 1599]), "preds[1]",
                 r"shorter than .*minimum of 0\.1 s", id="too-short-row"),
    pytest.param(lambda: dict(preds=[]), "preds", r"batch is empty", id="empty-list"),
    pytest.param(lambda: dict(preds=torch.zeros(0, N)), "preds", r"batch is empty", id="empty-batch"),
    # non-finite samples
    pytest.param(lambda: dict(preds=[good(), full(float("nan"))]), "preds[1]", r"NaN", id="nan-clip"),
    pytest.param(lambda: dict(preds=[good(), torch.cat([good(), full(float("inf"), 1)])]), "preds[1]",
                 r"1 NaN/Inf sample", id="one-inf-sample"),
    pytest.param(lambda: dict(preds=[good(), -full(float("inf"))]), "preds[1]", r"Inf", id="minus-inf-clip"),
    pytest.param(lambda: dict(preds=torch.stack([good(), full(float("nan"))]), lengths=[N, 2000]),
                 "preds[1]", r"NaN", id="nan-row-within-length"),
    # wrong dtype
    pytest.param(lambda: dict(preds=[good(), torch.ones(N, dtype=torch.bool)]), "preds[1]",
                 r"unsupported sample dtype torch\.bool", id="bool"),
    pytest.param(lambda: dict(preds=[good(), torch.ones(N, dtype=torch.complex64)]), "preds[1]",
                 r"unsupported sample dtype torch\.complex64", id="complex"),
    pytest.param(lambda: dict(preds=[good(), torch.ones(N, dtype=torch.int64)]), "preds[1]",
                 r"unsupported sample dtype torch\.int64", id="int64"),
    pytest.param(lambda: dict(preds=torch.ones(2, N, dtype=torch.complex128)), "preds",
                 r"unsupported sample dtype torch\.complex128", id="complex-batch"),
    # wrong rank
    pytest.param(lambda: dict(preds=torch.zeros(2, 1, N)), "preds", r"expected shape .*got \(2, 1, 4000\)",
                 id="3d-tensor"),
    pytest.param(lambda: dict(preds=torch.tensor(0.5)), "preds", r"expected shape .*got \(\)", id="0d-tensor"),
    pytest.param(lambda: dict(preds=[good(), torch.zeros(2, N)]), "preds[1]",
                 r"expected a 1-D clip, got shape \(2, 4000\)", id="2d-item-in-list"),
    pytest.param(lambda: dict(preds=[good(), torch.tensor(0.5)]), "preds[1]",
                 r"expected a 1-D clip, got shape \(\)", id="0d-item-in-list"),
    # lengths
    pytest.param(lambda: dict(preds=batch2(), lengths=[N]), "preds", r"1 lengths for a batch of 2",
                 id="lengths-too-few"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, N, N]), "preds", r"3 lengths for a batch of 2",
                 id="lengths-too-many"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, N + 1]), "preds[1]",
                 r"length 4001 is not .* in \[0, 4000\]", id="length-longer-than-row"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, -1]), "preds[1]",
                 r"length -1 is not .* in \[0, 4000\]", id="negative-length"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, 2000.5]), "preds[1]",
                 r"length 2000\.5 is not a whole number", id="fractional-length"),
    pytest.param(lambda: dict(preds=batch2(), lengths=[N, float("nan")]), "preds[1]",
                 r"length nan is not a whole number", id="nan-length"),
    pytest.param(lambda: dict(preds=batch2(), lengths="4000"), "preds", r"lengths= must be whole numbers",
                 id="lengths-a-string"),
    pytest.param(lambda: dict(preds=[good(), good(1)], lengths=[N, N]), "preds",
                 r"lengths= is only for a padded 2-D tensor", id="lengths-with-a-list"),
    # not audio at all
    pytest.param(lambda: dict(preds=[good(), good(1).tolist()]), "preds[1]",
                 r"expected a torch\.Tensor or numpy array, got list", id="list-mixing-tensor-and-list"),
    pytest.param(lambda: dict(preds=[good(), None]), "preds[1]",
                 r"expected a torch\.Tensor or numpy array, got NoneType", id="list-mixing-tensor-and-none"),
    pytest.param(lambda: dict(preds=[good(), "b.wav"]), "preds[1]",
                 r"expected a torch\.Tensor or numpy array, got str", id="list-mixing-tensor-and-path"),
    pytest.param(lambda: dict(preds="a.wav"), "preds", r"expected a torch\.Tensor or numpy array, got str",
                 id="a-path"),
    pytest.param(lambda: dict(preds=None), "preds", r"expected a torch\.Tensor or numpy array, got NoneType",
                 id="none"),
    # the same kinds as numpy arrays
    pytest.param(lambda: dict(preds=[good().numpy(), np.zeros(0, np.float32)]), "preds[1]", r"empty",
                 id="np-empty-clip"),
    pytest.param(lambda: dict(preds=[good().numpy(), good(n=800).numpy()]), "preds[1]",
                 r"shorter than .*minimum of 0\.1 s", id="np-too-short"),
    pytest.param(lambda: dict(preds=[good().numpy(), np.full(N, np.nan, np.float32)]), "preds[1]", r"NaN",
                 id="np-nan"),
    pytest.param(lambda: dict(preds=[good().numpy(), np.full(N, np.inf)]), "preds[1]", r"Inf", id="np-inf"),
    pytest.param(lambda: dict(preds=[good().numpy(), np.ones(N, bool)]), "preds[1]",
                 r"unsupported sample dtype bool", id="np-bool"),
    pytest.param(lambda: dict(preds=np.ones((2, N), np.complex64)), "preds",
                 r"unsupported sample dtype complex64", id="np-complex"),
    pytest.param(lambda: dict(preds=[good().numpy(), np.ones(N, np.uint16)]), "preds[1]",
                 r"unsupported sample dtype uint16", id="np-uint16"),
    pytest.param(lambda: dict(preds=np.array([good().numpy(), None], dtype=object)), "preds",
                 r"unsupported sample dtype object", id="np-object"),
    pytest.param(lambda: dict(preds=np.zeros((2, 1, N), np.float32)), "preds",
                 r"expected shape .*got \(2, 1, 4000\)", id="np-3d"),
    pytest.param(lambda: dict(preds=np.array(0.5, np.float32)), "preds", r"expected shape .*got \(\)",
                 id="np-0d"),
    pytest.param(lambda: dict(preds=np.stack([good().numpy(), good(1).numpy()]), lengths=[N, N + 1]),
                 "preds[1]", r"length 4001 is not", id="np-length-longer-than-row"),
]


@pytest.fixture(scope="module")
def shared_metric() -> DistillMOS:
    return DistillMOS(fs=FS)


@pytest.fixture
def metric(shared_metric: DistillMOS) -> DistillMOS:
    shared_metric.reset()
    return shared_metric


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("via", ["functional", "metric"])
@pytest.mark.parametrize(("make", "where", "what"), CLIP_CASES)
def test_api_refuses_malformed_input_naming_the_clip(via, make, where, what, metric):
    kw = make()
    with pytest.raises(AudioError) as info:
        if via == "functional":
            F.distillmos(kw["preds"], fs=FS, lengths=kw.get("lengths"))
        else:
            metric.update(kw["preds"], lengths=kw.get("lengths"))
    msg = _message(info)
    assert msg.startswith(f"{where}: "), msg
    assert re.search(what, msg), msg
    if via == "metric":  # a refused batch is not counted, not even its good clips
        assert int(metric.total) == 0


@pytest.mark.parametrize(("make", "what"), [
    pytest.param(lambda: [good(), torch.zeros(0)], r"empty", id="empty"),
    pytest.param(lambda: [good(), good(n=800)], r"shorter than", id="too-short"),
    pytest.param(lambda: [good(), full(float("nan"))], r"NaN", id="nan"),
    pytest.param(lambda: [good(), torch.ones(N, dtype=torch.bool)], r"dtype", id="bool"),
    pytest.param(lambda: [good(), torch.zeros(2, N)], r"1-D", id="2d-item"),
    pytest.param(lambda: [good(), [0.0] * N], r"got list", id="not-a-tensor"),
])
def test_metric_names_the_clip_by_its_id(metric, make, what):
    with pytest.raises(AudioError) as info:
        metric.update(make(), ids=["utt-a", "utt-b"])
    msg = _message(info)
    assert msg.startswith("preds[1] (utt-b): "), msg
    assert re.search(what, msg), msg
    assert int(metric.total) == 0


BAD_RATES = [
    pytest.param(0, r"positive whole number of Hz, got 0", id="zero"),
    pytest.param(-16000, r"positive whole number of Hz, got -16000", id="negative"),
    pytest.param(float("nan"), r"positive whole number of Hz, got nan", id="nan"),
    pytest.param(float("inf"), r"positive whole number of Hz, got inf", id="inf"),
    pytest.param(16000.5, r"positive whole number of Hz, got 16000\.5", id="fractional"),
    pytest.param("16000", r"must be a number of Hz, got '16000'", id="string"),
    pytest.param(True, r"must be a number of Hz, got True", id="bool"),
    pytest.param(None, r"sample rate is unknown; pass fs=", id="none"),
]


@pytest.mark.parametrize(("fs", "what"), BAD_RATES)
def test_functional_refuses_a_bad_sample_rate(fs, what):
    with pytest.raises(AudioError) as info:
        F.distillmos(good(), fs=fs)
    msg = _message(info)
    assert msg.startswith("preds: "), msg
    assert re.search(what, msg), msg


@pytest.mark.parametrize(("fs", "what"), BAD_RATES)
def test_metric_refuses_a_bad_sample_rate_when_built(fs, what):
    with pytest.raises(AudioError) as info:
        DistillMOS(fs=fs)
    msg = _message(info)
    assert msg.startswith("DistillMOS: "), msg
    assert re.search(what, msg), msg


@pytest.mark.parametrize("per_utterance", [False, True], ids=["mean", "per-utterance"])
@pytest.mark.parametrize("ids", [["only-one"], ["a", "b", "c"]], ids=["too-few-ids", "too-many-ids"])
def test_metric_refuses_ids_of_the_wrong_count_before_counting(ids, per_utterance):
    m = DistillMOS(fs=FS, per_utterance=per_utterance)
    with pytest.raises(ValueError, match=rf"{len(ids)} ids for a batch of 2"):
        m.update(batch2(), ids=ids)
    assert int(m.total) == 0


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_functional_scores_a_silent_clip_with_a_warning_naming_it(kind):
    clips = [good(), torch.zeros(N)]
    if kind == "numpy":
        clips = [c.numpy() for c in clips]
    with pytest.warns(SilentAudioWarning) as record:
        scores = F.distillmos(clips, fs=FS)
    silent = [str(w.message) for w in record if issubclass(w.category, SilentAudioWarning)]
    assert len(silent) == 1 and silent[0].startswith("preds[1]: ") and "all zeros" in silent[0], silent
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all())
    # the good clip in the same batch is scored as it is alone
    assert float(scores[0]) == pytest.approx(float(F.distillmos(good(), fs=FS)), abs=1e-4)


def test_metric_scores_a_silent_clip_with_a_warning_naming_it(metric):
    with pytest.warns(SilentAudioWarning, match=r"^preds\[1\] \(quiet\): the clip is all zeros"):
        metric.update(torch.stack([good(), torch.zeros(N)]), ids=["speech", "quiet"])
    assert int(metric.total) == 2
    assert bool(torch.isfinite(metric.compute()))


def test_speech_gives_no_silence_warning():
    """The control of the silent cases: a clip with signal does not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SilentAudioWarning)
        assert F.distillmos([good(), good(1)], fs=FS).shape == (2,)


# ============================================================================ CLI


def _wav(path: Path, x: torch.Tensor | np.ndarray, fs: int = FS, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(x), fs, subtype=subtype)
    return path


def _expected(path: Path) -> float:
    x, sr = sf.read(path, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SilentAudioWarning)
        return float(F.distillmos(torch.from_numpy(x), fs=sr))


@pytest.fixture(scope="module")
def goods(tmp_path_factory) -> dict[str, float]:
    """Two good files and their scores, as torchmos.functional gives them."""
    d = tmp_path_factory.mktemp("good")
    paths = [_wav(d / "good1.wav", good(1)), _wav(d / "good2.wav", good(2))]
    return {str(p): _expected(p) for p in paths}


def _rows(out: Path) -> list[dict[str, str]]:
    if not out.exists():
        return []
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def _header(channels: int, fs: int, frames: int, data: bytes = b"") -> bytes:
    """A 16-bit PCM RIFF/WAVE header declaring ``frames`` frames, followed by ``data``."""
    block = channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, fs, fs * block, block, 16)
    size = frames * block
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", size) + data)


def _truncated(d: Path) -> Path:
    whole = _wav(d / "whole.wav", good(3, n=8000)).read_bytes()
    assert len(whole) == 44 + 16000
    cut = d / "cut.wav"
    cut.write_bytes(whole[: 44 + 2000])  # the header says 8000 frames; 1000 are left
    return cut


def _nan_file(d: Path, value: float) -> Path:
    x = good(4).numpy().copy()
    x[100] = value
    return _wav(d / "nonfinite.wav", x, subtype="FLOAT")


# Each case builds its bad input in a fresh folder: (inputs to pass, the label its FAILED
# line must start with, what the message must say is wrong).
def case_garbage(d):
    p = d / "garbage.wav"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return [p], str(p), r"cannot be read as audio"


def case_text_named_wav(d):
    p = d / "notes.wav"
    p.write_text("these are notes, not audio\n")
    return [p], str(p), r"cannot be read as audio"


def case_empty_file(d):
    p = d / "empty.wav"
    p.write_bytes(b"")
    return [p], str(p), r"cannot be read as audio"


def case_truncated_wav(d):
    p = _truncated(d)
    return [p], str(p), r"truncated .*declares 8000 frames .*only 1000 are present"


def case_zero_channels(d):
    p = d / "zero-channels.wav"
    p.write_bytes(_header(0, FS, 100, b"\0" * 200))
    return [p], str(p), r"cannot be read as audio"


def case_zero_sample_rate_header(d):
    p = d / "zero-rate.wav"
    p.write_bytes(_header(1, 0, 100, b"\0" * 200))
    return [p], str(p), r"cannot be read as audio"


def case_zero_frames(d):
    p = _wav(d / "zero-frames.wav", np.zeros(0, np.int16))
    return [p], str(p), r"no audio samples"


def case_nan_samples(d):
    p = _nan_file(d, float("nan"))
    return [p], str(p), r"1 NaN/Inf sample"


def case_inf_samples(d):
    p = _nan_file(d, float("inf"))
    return [p], str(p), r"1 NaN/Inf sample"


def case_too_short(d):
    p = _wav(d / "short.wav", good(5, n=800))
    return [p], str(p), r"0\.050 s .*shorter than .*minimum of 0\.1 s"


def case_directory_in_a_list(d):
    folder = d / "folder.wav"
    folder.mkdir()
    lst = d / "list.txt"
    lst.write_text(f"{folder}\n")
    return [lst], str(folder), r"is a directory"


def case_missing_file_in_a_list(d):
    lst = d / "list.txt"
    lst.write_text(f"{d / 'gone.wav'}\n")
    return [lst], str(d / "gone.wav"), r"no such file"


def case_failing_pipe(d):
    scp = d / "wav.scp"
    scp.write_text("utt-x false |\n")
    return [scp], "utterance 'utt-x'", r"pipe command 'false' failed \(exit 1\)"


def case_pipe_of_a_truncated_wav(d):
    cut = _truncated(d)
    scp = d / "wav.scp"
    scp.write_text(f"utt-cut cat {shlex.quote(str(cut))} |\n")
    return [scp], "utterance 'utt-cut'", r"truncated"


def case_pipe_writing_nothing(d):
    scp = d / "wav.scp"
    scp.write_text("utt-silent-pipe true |\n")
    return [scp], "utterance 'utt-silent-pipe'", r"cannot be read as audio"


def case_missing_file_in_an_scp(d):
    scp = d / "wav.scp"
    scp.write_text(f"utt-gone {d / 'gone.wav'}\n")
    return [scp], str(d / "gone.wav"), r"no such file"


BAD_FILES = [
    case_garbage, case_text_named_wav, case_empty_file, case_truncated_wav, case_zero_channels,
    case_zero_sample_rate_header, case_zero_frames, case_nan_samples, case_inf_samples, case_too_short,
    case_directory_in_a_list, case_missing_file_in_a_list, case_failing_pipe,
    case_pipe_of_a_truncated_wav, case_pipe_writing_nothing, case_missing_file_in_an_scp,
]


@pytest.mark.parametrize("make", BAD_FILES, ids=[f.__name__.removeprefix("case_").replace("_", "-")
                                                  for f in BAD_FILES])
def test_cli_reports_a_bad_file_and_scores_the_others(make, goods, tmp_path, capsys):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    inputs, label, what = make(bad_dir)
    good1, good2 = goods
    out = tmp_path / "scores.csv"
    # the bad entry shares its batch with good1; good2 comes in the next batch
    argv = ["score", good1, *map(str, inputs), good2, "-o", str(out), "-q", "--batch-size", "2"]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    failed = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("FAILED")]
    assert len(failed) == 1, err
    assert failed[0].startswith(f"FAILED {label}: "), failed[0]
    assert re.search(what, failed[0]), failed[0]
    assert f"torchmos: skipped: {label}: " in err  # reported as it happens, too
    assert "2 scored, 1 failed" in err
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(goods)
    for r in rows:
        assert float(r["score"]) == pytest.approx(goods[r["path"]], abs=1e-4)


def test_cli_scores_a_silent_file_with_a_warning_naming_it(goods, tmp_path, capsys):
    silent = _wav(tmp_path / "silent.wav", np.zeros(N, np.int16))
    out = tmp_path / "scores.csv"
    good1, good2 = goods
    assert cli.main(["score", good1, str(silent), good2, "-o", str(out), "-q", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert f"torchmos: warning: {silent}: the clip is all zeros" in err
    assert "3 scored, 0 failed" in err and "FAILED" not in err
    rows = {r["path"]: float(r["score"]) for r in _rows(out)}
    assert set(rows) == {good1, good2, str(silent)}
    assert rows[str(silent)] == pytest.approx(_expected(silent), abs=1e-4)
    assert rows[good1] == pytest.approx(goods[good1], abs=1e-4)


class Gadget:
    """Pickles to a call of ``Path.touch``: code that would run while the file is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint whose unpickling would run code (touch a marker file): (file, marker)."""
    d = tmp_path_factory.mktemp("evil")
    marker = d / "code-ran"
    p = d / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "gadget": Gadget(marker)}, p)
    # the payload is live: an unsafe load does run it (here, on a copy with its own marker)
    armed_marker = d / "armed-code-ran"
    torch.save({"gadget": Gadget(armed_marker)}, d / "armed.pt")
    torch.load(d / "armed.pt", weights_only=False)
    assert armed_marker.exists()
    return p, marker


def _usage_cases():
    """(argv after `score GOOD`, built in folder d) -> (argv, text the error must contain)."""

    def missing_input(d, ev):
        return [str(d / "missing.wav")], rf"{re.escape(str(d / 'missing.wav'))}: no such file"

    def empty_list(d, ev):
        (d / "list.txt").write_text("")
        return [str(d / "list.txt")], rf"{re.escape(str(d / 'list.txt'))}: the list holds no entries"

    def scp_of_comments_only(d, ev):
        (d / "wav.scp").write_text("# nothing here\n\n")
        return [str(d / "wav.scp")], rf"{re.escape(str(d / 'wav.scp'))}: the list holds no entries"

    def scp_line_without_a_path(d, ev):
        (d / "wav.scp").write_text(f"utt-ok {d / 'ok.wav'}\nutt-only\n")
        return [str(d / "wav.scp")], (rf"{re.escape(str(d / 'wav.scp'))}:2: expected '<utt-id> <path>'"
                                      r".*'utt-only'")

    def directory_named_like_a_wav(d, ev):
        (d / "take1.wav").mkdir()
        return [str(d / "take1.wav")], rf"{re.escape(str(d / 'take1.wav'))}: the folder holds no audio"

    def pickle_with_code_as_checkpoint(d, ev):
        return (["--checkpoint", str(ev)],
                rf"{re.escape(str(ev))}: refused: the file holds a Python object other than tensors")

    def pickle_with_code_as_model(d, ev):
        return (["--model", str(ev)],
                rf"{re.escape(str(ev))}: refused: the file holds a Python object other than tensors")

    def checkpoint_not_a_torch_file(d, ev):
        (d / "junk.pt").write_bytes(b"not a checkpoint" * 8)
        return ["--checkpoint", str(d / "junk.pt")], rf"{re.escape(str(d / 'junk.pt'))}: cannot be loaded"

    def checkpoint_missing(d, ev):
        return ["--checkpoint", str(d / "nope.pt")], rf"{re.escape(str(d / 'nope.pt'))}: no such file"

    def checkpoint_sha256_mismatch(d, ev):
        (d / "mine.pt").write_bytes(b"my weights")
        return (["--checkpoint", str(d / "mine.pt"), "--sha256", "0" * 64],
                rf"{re.escape(str(d / 'mine.pt'))}: sha256 [0-9a-f]{{64}} does not match the pinned 0{{64}}")

    def model_file_sha256_mismatch(d, ev):
        (d / "mine.pt").write_bytes(b"my weights")
        return (["--model", str(d / "mine.pt"), "--sha256", "f" * 64],
                rf"{re.escape(str(d / 'mine.pt'))}: sha256 [0-9a-f]{{64}} does not match the pinned f{{64}}")

    def unknown_model(d, ev):
        return ["--model", "distilmos"], r"unknown model 'distilmos'.*Did you mean 'distillmos'\?"

    def unknown_model_prefix(d, ev):
        return (["--model", "scoreq-nr"],
                r"unknown model 'scoreq-nr'.*Did you mean 'scoreq-nr-natural' or 'scoreq-nr-synthetic'\?")

    def batch_size_zero(d, ev):
        return ["--batch-size", "0"], r"--batch-size must be 1 or more, got 0"

    def batch_size_negative(d, ev):
        return ["--batch-size", "-2"], r"--batch-size must be 1 or more, got -2"

    return [missing_input, empty_list, scp_of_comments_only, scp_line_without_a_path,
            directory_named_like_a_wav, pickle_with_code_as_checkpoint, pickle_with_code_as_model,
            checkpoint_not_a_torch_file, checkpoint_missing, checkpoint_sha256_mismatch,
            model_file_sha256_mismatch, unknown_model, unknown_model_prefix, batch_size_zero,
            batch_size_negative]


USAGE_CASES = _usage_cases()


@pytest.mark.parametrize("make", USAGE_CASES, ids=[f.__name__.replace("_", "-") for f in USAGE_CASES])
def test_cli_usage_error_exits_2_naming_what_is_wrong(make, goods, evil, tmp_path, capsys):
    evil_file, marker = evil
    argv_tail, what = make(tmp_path, evil_file)
    out = tmp_path / "out" / "scores.csv"
    good1 = next(iter(goods))
    rc = cli.main(["score", good1, *argv_tail, "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("torchmos: "), err
    assert "Traceback" not in err
    assert re.search(what, err, flags=re.DOTALL), err
    assert _rows(out) == []  # a wrong command line scores nothing
    assert not marker.exists(), "unpickling the checkpoint ran its code"


def test_cli_refusal_of_a_pickle_with_code_is_one_plain_line(goods, evil, capsys):
    evil_file, marker = evil
    assert cli.main(["score", next(iter(goods)), "--checkpoint", str(evil_file), "-q"]) == 2
    err = capsys.readouterr().err
    assert "\x1b[" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not marker.exists()


def test_cli_bad_file_given_alone_exits_1_and_names_it(tmp_path, capsys):
    """With nothing else to score, a bad file is still a failure (1), not a usage error."""
    p = _truncated(tmp_path)
    rc = cli.main(["score", str(p), "-o", str(tmp_path / "s.csv"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "0 scored, 1 failed" in err and f"FAILED {p}: truncated" in err
    assert _rows(tmp_path / "s.csv") == []


def test_cli_bad_files_in_a_folder_are_each_named(goods, tmp_path, capsys):
    """A folder of several bad files (and a folder named like a wav, which is skipped):
    every bad file gets its own FAILED line, the good ones are scored."""
    d = tmp_path / "in"
    d.mkdir()
    for name in goods:
        shutil.copy(name, d / Path(name).name)
    bad = {
        str(_wav(d / "short.wav", good(5, n=800))): r"shorter than",
        str(_wav(d / "nan.wav", np.full(N, np.nan, np.float32), subtype="FLOAT")): r"NaN",
        str(_truncated(d / "sub")): r"truncated",
    }
    (d / "sub" / "whole.wav").unlink()
    (d / "empty.wav").write_bytes(b"")
    bad[str(d / "empty.wav")] = r"cannot be read as audio"
    (d / "folder.wav").mkdir()
    out = tmp_path / "scores.csv"
    assert cli.main(["score", str(d), "-o", str(out), "-q", "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert f"2 scored, {len(bad)} failed" in err
    failed = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("FAILED")]
    for path, what in bad.items():
        mine = [ln for ln in failed if ln.startswith(f"FAILED {path}: ")]
        assert len(mine) == 1 and re.search(what, mine[0]), (path, failed)
    scores = {Path(r["path"]).name: float(r["score"]) for r in _rows(out)}
    assert scores == pytest.approx({Path(p).name: s for p, s in goods.items()}, abs=1e-4)
