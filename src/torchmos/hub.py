"""Where weights come from: model cards and the one resolver.

A :class:`ModelCard` carries a predictor's weights *and* the facts a caller must not get
wrong (native sample rate, mode, score range, licence, citation), in the spirit of
torchaudio's pipeline bundles. :func:`resolve` finds a card's weight file, in this order:

1. an explicit ``checkpoint=`` path given by the user;
2. the cache, ``$TORCHMOS_HOME`` (default ``~/.cache/torchmos``) ``/<card>/<file>``;
3. a file shipped inside an installed Python distribution (located through its metadata,
   never imported), e.g. ``distillmos/weights/distill_mos_v7.pt``;
4. a download from the card's URLs into the cache, unless ``TORCHMOS_OFFLINE=1``.

Downloads stream into a temporary file beside the target (``<file>.<random>.part``), are
checked against the card's sha256 and renamed atomically, all under a file lock, so eight
DDP ranks starting together download once; temporary files that a killed download left are
removed under that lock by the next download. Files whose authors publish no checksum are
trusted on first use: the sha256 of the first *whole* download is recorded beside the file
(``<file>.sha256``) and checked on every later load and every re-download; a user can pin
one with ``sha256=`` (which also checks a user's own ``checkpoint=``).

A download is whole only with evidence: the length the server stated (Content-Length, or
the end of a chunked transfer), and, when nothing else vouches for the bytes, the file's
own structure (a torch zip checkpoint ends with its central directory; a ``.safetensors``
header states the data's length). A download with neither a stated length nor a checkable
format is refused unless a checksum is pinned. A download that ends with an error is never
recorded. :func:`forget` resets a card's cache entry (weights, record, leftovers) when its
record is wrong, e.g. one an older torchmos made from a partial download.

Nothing else in torchmos touches the network or the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import json
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import torch

__all__ = [
    "CARDS",
    "HubError",
    "ModelCard",
    "WeightFile",
    "cache_dir",
    "check_file",
    "forget",
    "get_card",
    "list_cards",
    "load_checkpoint",
    "local_status",
    "register",
    "resolve",
    "save_atomic",
    "sha256sum",
]


class HubError(RuntimeError):
    """Weights could not be found, downloaded or verified. The message says what to do."""


@dataclass(frozen=True)
class WeightFile:
    """One weight file: where it can come from and how to check it."""

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None  # None: no published checksum; trust on first use
    size: int | None = None
    package: tuple[str, str] | None = None  # (distribution, path inside it)


@dataclass(frozen=True)
class ModelCard:
    """A predictor: its weights and the facts that go with them."""

    name: str
    family: str
    title: str
    summary: str
    weights: WeightFile | None
    sample_rate: int  # the model's rate; 0: native rate, never resampled (MSR-UTMOS)
    mode: str = "nr"  # "nr" (no reference) or "ref" (needs a reference)
    domain: str = "natural"
    higher_is_better: bool = True
    score_range: tuple[float, float] = (1.0, 5.0)
    min_seconds: float = 0.1
    licence: str = ""
    citation: str = ""
    homepage: str = ""
    options: dict[str, Any] = field(default_factory=dict)


CARDS: dict[str, ModelCard] = {}


def register(card: ModelCard) -> ModelCard:
    """Add a card to the registry (a new predictor registers here)."""
    CARDS[card.name] = card
    return card


def get_card(name: str | ModelCard) -> ModelCard:
    """The card called ``name``; a clear error lists the known names otherwise."""
    if isinstance(name, ModelCard):
        return name
    try:
        return CARDS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(CARDS))}") from None


def list_cards() -> list[ModelCard]:
    return [CARDS[k] for k in sorted(CARDS)]


# ----------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """``$TORCHMOS_HOME``, default ``~/.cache/torchmos``."""
    return Path(os.environ.get("TORCHMOS_HOME") or Path.home() / ".cache" / "torchmos")


def _offline() -> bool:
    return os.environ.get("TORCHMOS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _cache_path(card: ModelCard) -> Path:
    assert card.weights is not None
    return cache_dir() / card.name / card.weights.filename


def _package_path(wf: WeightFile) -> Path | None:
    if wf.package is None:
        return None
    dist_name, rel = wf.package
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    p = Path(str(dist.locate_file(rel)))
    return p if p.is_file() else None


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _recorded(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _is_sha256(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def _pin(sha256: str | None) -> str | None:
    """A user's pinned checksum in lower case ('sha256:' prefix and spaces allowed), or None."""
    if sha256 is None or not sha256.strip():
        return None
    s = sha256.strip().lower().removeprefix("sha256:").strip()
    if not _is_sha256(s):
        raise HubError(f"sha256={sha256!r} is not a sha256 checksum (64 hexadecimal digits).")
    return s


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_orphans(target: Path) -> list[Path]:
    """Delete the temporary files (``<file>.*.part``, the record's included) that a killed
    download left beside ``target``. Only under ``target``'s lock: every writer of these
    files holds it, so none of them is being written."""
    return _unlink(p for p in target.parent.iterdir()
                   if p.name.startswith(target.name + ".") and p.name.endswith(".part") and p.is_file())


def _unlink(paths: Any) -> list[Path]:
    """Delete ``paths`` in order; returns those that existed."""
    removed = []
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
    return removed


def _reset_hint(card: ModelCard, path: Path, rec: Path) -> str:
    return f"delete {path} and {rec} (or call torchmos.hub.forget({card.name!r}) in Python)"


_Expectation = tuple[str | None, str, Path | None]  # (sha256, where it comes from, record)


def _expected(card: ModelCard, path: Path, pinned: str | None) -> _Expectation:
    """The checksum a file must have, where that expectation comes from, and the trust
    record it was read from (None unless it comes from one)."""
    if pinned:
        return pinned.lower(), "the sha256= you pinned", None
    assert card.weights is not None
    if card.weights.sha256:
        return card.weights.sha256.lower(), f"model card {card.name!r}", None
    rec = _recorded(path)
    if rec.is_file():
        words = rec.read_text().split()
        if not words or not _is_sha256(words[0].lower()):
            raise HubError(
                f"{rec}: not a sha256 record (expected '<64 hex digits>  <file>'). Delete it and "
                f"{path} (or call torchmos.hub.forget({card.name!r}) in Python), then run again to "
                "download and record a fresh copy."
            )
        return words[0].lower(), f"the checksum recorded at first download ({rec})", rec
    return None, "", None


def _whole(path: Path, name: str | None = None) -> tuple[bool | None, str]:
    """Whether a weight file is whole by its own structure: ``(True, "")`` when its format
    marks where it ends and that end is there, ``(False, why)`` when it is cut short, and
    ``(None, "")`` for a format whose end cannot be checked (e.g. torch's legacy pickle
    format). ``name``: the file's real name, if ``path`` is a temporary one. Reads only the
    header and the index, never the tensors."""
    size = path.stat().st_size
    if size == 0:
        return False, "the file is empty"
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: its index comes last
            try:
                zipfile.ZipFile(f).close()
            except Exception as e:  # any failure to read the index: not a whole archive
                return False, f"a torch zip checkpoint without its central directory ({e})"
            return True, ""
        if Path(name or path.name).suffix == ".safetensors" and len(head) == 8:
            n = int.from_bytes(head, "little")
            if 8 + n > size:
                return False, f"{size} bytes, but the .safetensors header alone is {8 + n}"
            try:
                header = json.loads(f.read(n))
                ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
                end = max(ends, default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                return False, f"unreadable .safetensors header ({type(e).__name__}: {e})"
            if 8 + n + end != size:
                return False, f"{size} bytes, but its .safetensors header describes {8 + n + end}"
            return True, ""
    return None, ""


def _verify(card: ModelCard, path: Path, pinned: str | None) -> None:
    want, why, rec = _expected(card, path, pinned)
    if want is None:
        return
    got = sha256sum(path)
    if got != want:
        fix = ", or fix the pinned checksum." if pinned else "."
        if rec is not None:
            fix = (f". If the fresh copy is refused too, the record is what is wrong (made from a "
                   f"partial download by an older torchmos, or the publisher changed the file): "
                   f"{_reset_hint(card, path, rec)} and run again.")
        raise HubError(
            f"{path}: sha256 {got} does not match {want} from {why}. The file is corrupt or "
            f"not the expected release: delete it and run again to download a fresh copy{fix}"
        )
    if rec is not None:  # a record vouches only for what it saw (older versions saw partial files)
        whole, reason = _whole(path)
        if whole is False:
            raise HubError(
                f"{path}: the file is cut short ({reason}), though it matches its record {rec}: "
                "the record was made from a partial download. To download and record a whole copy, "
                f"{_reset_hint(card, path, rec)} and run again."
            )


# ----------------------------------------------------------------------------- resolver

# How a user passes their own weight file, on the command line and in Python.
CHECKPOINT_HINT = "pass --checkpoint PATH on the command line (checkpoint=PATH in Python)"


def resolve(
    card: str | ModelCard,
    checkpoint: str | os.PathLike | None = None,
    sha256: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Path of a card's weight file, verified; downloads it if needed (see module docs).

    Args:
        card: a card or its name.
        checkpoint: an explicit file, used as is (checked against ``sha256`` if given).
        sha256: a checksum to pin (64 hex digits, ``sha256:`` prefix allowed), overriding the
            card's (or the recorded) one; it also checks an explicit ``checkpoint``.
        progress: show a download progress bar (default: when stderr is a terminal).
    """
    card = get_card(card)
    sha256 = _pin(sha256)
    if checkpoint is not None:
        return check_file(checkpoint, sha256)
    wf = card.weights
    if wf is None:
        raise HubError(
            f"model {card.name!r} has no released weights; give a weight file (for example one "
            f"trained with `torchmos train`): {CHECKPOINT_HINT}."
        )
    target = _cache_path(card)
    if target.is_file():
        _verify(card, target, sha256)
        return target
    pkg = _package_path(wf)
    if pkg is not None:
        _verify(card, pkg, sha256)
        return pkg
    if _offline() or not wf.urls:
        hint = ""
        if wf.package:
            hint = f" or install the Python package {wf.package[0]!r} (it ships the file)"
        src = f" Download {wf.urls[0]}" if wf.urls else " Obtain the file"
        check = f" (sha256 {sha256 or wf.sha256})" if (sha256 or wf.sha256) else ""
        why = "TORCHMOS_OFFLINE is set, so torchmos will not download it." if _offline() else "It has no download URL."
        raise HubError(
            f"weights for {card.name!r} are not available locally. {why}{src}{check} and place it at "
            f"{target}{hint}, or {CHECKPOINT_HINT}."
        )
    return _download(card, target, sha256, progress)


def check_file(checkpoint: str | os.PathLike, sha256: str | None = None) -> Path:
    """A user's own weight file: it must exist and, when ``sha256`` is pinned (64 hex
    digits, ``sha256:`` prefix allowed), match it. Checked before the file is ever read as
    a checkpoint.

    >>> weights = resolve("distillmos")
    >>> check_file(weights, "sha256:" + sha256sum(weights).upper()) == weights
    True
    """
    p = Path(checkpoint).expanduser()
    if not p.is_file():
        raise HubError(f"checkpoint {p}: no such file.")
    pin = _pin(sha256)
    if pin:
        got = sha256sum(p)
        if got != pin:
            raise HubError(f"checkpoint {p}: sha256 {got} does not match the pinned {pin}.")
    return p


def forget(card: str | ModelCard) -> list[Path]:
    """Reset a card's cache entry: delete its downloaded weights, the checksum recorded at
    their first download and any temporary files a killed download left, under the download
    lock. The next :func:`resolve` downloads afresh (and records the new file's checksum if
    the card publishes none). Use it when torchmos refuses a cached file because of its
    record, or to accept a file its publisher has changed. Returns the paths deleted.

    >>> from torchmos import hub
    >>> hub.forget("scoreq-nr-natural")  # doctest: +SKIP
    """
    card = get_card(card)
    if card.weights is None:
        return []
    target = _cache_path(card)
    if not target.parent.is_dir():
        return []
    with filelock.FileLock(str(target) + ".lock"):
        # the weights before their record: never seen without a record
        return _remove_orphans(target) + _unlink([target, _recorded(target)])


def _download(card: ModelCard, target: Path, pinned: str | None, progress: bool | None) -> Path:
    assert card.weights is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        _remove_orphans(target)  # a killed download's leftovers; ours is not started yet
        if target.is_file():  # another process finished it while we waited
            _verify(card, target, pinned)
            return target
        expect = _expected(card, target, pinned)  # a record left without its file counts too
        errors = []
        for url in card.weights.urls:  # mirrors, in order; a failure moves on to the next
            try:
                _fetch(url, card, target, expect, progress)
                return target
            except HubError as e:  # incomplete or wrong checksum: already names the URL
                errors.append(str(e))
            except _NETWORK_ERRORS as e:
                errors.append(f"{url}: {type(e).__name__}: {e}")
        raise HubError(
            f"could not download weights for {card.name!r}:\n  " + "\n  ".join(errors) + f"\n"
            f"Download the file by hand and place it at {target}, or {CHECKPOINT_HINT}."
        )


# What a failed HTTP fetch raises: connection refused/reset and HTTP status errors
# (URLError, OSError), a server that stops mid-response or speaks no HTTP (HTTPException,
# IncompleteRead for a chunked transfer cut short), a malformed URL or header (ValueError).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError, ValueError)


def _fetch(url: str, card: ModelCard, target: Path, expect: _Expectation,
           progress: bool | None) -> None:
    """Download ``url`` into ``target`` (under its lock), or raise and leave nothing."""
    assert card.weights is not None
    want, why, rec = expect
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out:  # opened first, so the descriptor is closed on any error
            req = urllib.request.Request(url, headers={"User-Agent": "torchmos"})
            with urllib.request.urlopen(req, timeout=60) as r:
                # A chunked transfer marks its own end (http.client raises IncompleteRead
                # without it); otherwise only a Content-Length says where the body ends.
                chunked = bool(getattr(r, "chunked", False))
                stated = (r.headers.get("Content-Length") or "").strip()
                total = int(stated) if stated.isdigit() and not chunked else None
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"torchmos: {card.name}",
                           disable=(not progress) if progress is not None else None, leave=False)
                with bar:
                    while block := r.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        n += len(block)  # not bar.n: a disabled tqdm bar counts nothing
                        bar.update(len(block))
        if total is not None and n != total:
            raise HubError(f"{url}: download incomplete ({n} of {total} bytes); it was discarded.")
        got = h.hexdigest()
        if want is not None and got != want:
            raise HubError(
                f"{url}: downloaded file has sha256 {got}, expected {want} from {why}; it was "
                "discarded. " + (f"If the publisher has changed the file on purpose, "
                                 f"{_reset_hint(card, target, rec)} to trust the new one." if rec
                                 else "The server may be serving a different release.")
            )
        if want is None:  # no checksum vouches for these bytes: their own structure must
            whole, reason = _whole(Path(tmp), target.name)
            if whole is False:
                raise HubError(f"{url}: download cut short ({reason}); it was discarded.")
            if whole is None and total is None and not chunked:
                raise HubError(
                    f"{url}: the server sent no Content-Length, and {target.name} is neither a "
                    "torch zip checkpoint nor .safetensors, so torchmos cannot tell whether it "
                    "arrived whole; it was discarded. Pin its checksum to accept it (sha256= in "
                    "Python)."
                )
        if not card.weights.sha256:
            # Trust on first use: record what was verified now, before the file appears, so
            # no reader ever sees the weights without their record.
            _write_atomic(_recorded(target), f"{got}  {target.name}\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_status(card: str | ModelCard) -> str:
    """Where a card's weights are found locally: 'cache', 'package', or 'missing'."""
    card = get_card(card)
    if card.weights is None:
        return "train your own"
    if _cache_path(card).is_file():
        return "cache"
    if _package_path(card.weights) is not None:
        return "package"
    return "missing"


# ----------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise HubError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise HubError(f"{path}: reading .safetensors needs the 'safetensors' package.") from e
        try:
            return dict(load_file(str(path)))
        except Exception as e:  # SafetensorError and friends name no file
            raise HubError(f"{path}: not a valid .safetensors file ({type(e).__name__}: {e}).") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's own text: many lines, terminal escapes, unsafe advice
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise HubError(
                f"{path}: refused: the file holds a Python object other than tensors ({found.group(1)}), "
                "which could run code when loaded. torchmos reads weights only with "
                "torch.load(weights_only=True): re-save the file's state_dict (tensors only) from code "
                "you trust, or use safetensors."
            ) from None
        why = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, flags=re.S)
        raise HubError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) (not a torch checkpoint, or "
            f"a damaged one: {why.group(1).strip() if why else _first_line(e)})."
        ) from None
    except Exception as e:  # pickle errors carry little context of their own
        raise HubError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{_first_line(e)}). torchmos loads only tensors and plain containers, never arbitrary "
            "pickled code."
        ) from e
    if not isinstance(obj, dict):
        raise HubError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}.")
    return obj


def _first_line(e: BaseException) -> str:
    """An exception's first line, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into a temporary file beside ``path``, then rename it into place:
    a reader (or a resumed run) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ----------------------------------------------------------------------------- cards

_DISTILLMOS_CITATION = (
    "B. Stahl and H. Gamper, \"Distillation and Pruning for Scalable Self-Supervised "
    "Representation-Based Speech Quality Assessment,\" ICASSP 2025."
)

register(
    ModelCard(
        name="distillmos",
        family="distillmos",
        title="DistillMOS (Microsoft), no-reference MOS, 4.1 M parameters",
        summary="No-reference MOS of natural speech (noise suppression, codecs, packet loss), "
        "distilled from an XLS-R teacher. Weak on TTS.",
        weights=WeightFile(
            filename="distill_mos_v7.pt",
            sha256="b18b3ac60227267cfb91e5d00ce22cc7b73716fd92f269484da1446e27031a40",
            size=16907522,
            package=("distillmos", "distillmos/weights/distill_mos_v7.pt"),
        ),
        sample_rate=16000,
        mode="nr",
        domain="natural",
        higher_is_better=True,
        score_range=(1.0, 5.0),
        min_seconds=0.1,
        licence="MIT (weights and code of the distillmos package)",
        citation=_DISTILLMOS_CITATION,
        homepage="https://github.com/microsoft/Distill-MOS",
    )
)

_SCOREQ_CITATION = (
    "A. Ragano, J. Skoglund and A. Hines, \"SCOREQ: Speech Quality Assessment with "
    "Contrastive Regression,\" NeurIPS 2024."
)
_SCOREQ_ZENODO = "https://zenodo.org/records/13860326/files/{}.pt"
for _mode, _domain, _file, _summary in [
    ("nr", "natural", "adapt_nr_telephone",
     "No-reference MOS of natural speech (codecs, VoIP, enhancement); trained on NISQA TRAIN SIM."),
    ("ref", "natural", "fixed_nmr_telephone",
     "Distance in [0, 2] to a clean reference (full or non-matching); natural speech. Lower is better."),
    ("nr", "synthetic", "adapt_nr_synthetic",
     "No-reference MOS of synthetic speech (TTS, voice conversion); trained on VoiceMOS 2022."),
    ("ref", "synthetic", "fixed_nmr_synthetic",
     "Distance in [0, 2] to a clean reference (full or non-matching); synthetic speech. Lower is better."),
]:
    register(
        ModelCard(
            name=f"scoreq-{_mode}-{_domain}",
            family="scoreq",
            title=f"SCOREQ {'no-reference MOS' if _mode == 'nr' else 'reference distance'}, {_domain} speech",
            summary=_summary,
            weights=WeightFile(filename=f"{_file}.pt", urls=(_SCOREQ_ZENODO.format(_file),)),
            sample_rate=16000,
            mode=_mode,
            domain=_domain,
            higher_is_better=_mode == "nr",
            score_range=(1.0, 5.0) if _mode == "nr" else (0.0, 2.0),
            min_seconds=0.1,
            licence="code: MIT (alessandroragano/scoreq); weights: Zenodo record 13860326 (check its licence)",
            citation=_SCOREQ_CITATION,
            homepage="https://github.com/alessandroragano/scoreq",
            options={"mode": _mode},
        )
    )

register(
    ModelCard(
        name="vqscore",
        family="vqscore",
        title="VQScore, self-supervised quality from a VQ-VAE trained on clean speech",
        summary="Cosine fit of a clean-speech VQ-VAE codebook to the clip's encoding; "
        "higher is better, roughly in [0, 1]. Trainable on your own clean speech.",
        weights=WeightFile(
            filename="checkpoint-dnsmos_ovr_CC=0.835.pkl",
            urls=(
                "https://raw.githubusercontent.com/JasonSWFu/VQscore/main/exp/"
                "QE_cbook_size_2048_1_32_IN_input_encoder_z_Librispeech_clean_github/"
                "checkpoint-dnsmos_ovr_CC%3D0.835.pkl",
            ),
        ),
        sample_rate=16000,
        mode="nr",
        domain="natural",
        higher_is_better=True,
        score_range=(0.0, 1.0),
        min_seconds=0.1,
        licence="no licence file in the authors' repository (JasonSWFu/VQscore); ask the authors before redistribution",
        citation="S.-W. Fu, K.-H. Hung, Y. Tsao and Y.-C. F. Wang, \"Self-Supervised Speech Quality "
        "Estimation and Enhancement Using Only Clean Speech,\" ICLR 2024.",
        homepage="https://github.com/JasonSWFu/VQscore",
    )
)

_MSR_UTMOS_CITATION = (
    "G. Nishikawa, W. Nakata, Y. Saito, K. Imamura, H. Saruwatari and T. Nakamura, "
    "\"Multi-Sampling-Frequency Naturalness MOS Prediction Using Self-Supervised Learning Model "
    "with Sampling-Frequency-Independent Layer,\" AudioMOS Challenge 2025 (ASRU 2025 workshop), "
    "arXiv:2507.14647. SFI convolution: K. Saito, T. Nakamura, K. Yatabe and H. Saruwatari, "
    "\"Sampling-Frequency-Independent Convolutional Layer and its Application to Audio Source "
    "Separation,\" IEEE/ACM TASLP 30, 2022."
)

register(
    ModelCard(
        name="msr-utmos",
        family="msr-utmos",
        title="MSR-UTMOS, naturalness MOS at the clip's own sampling frequency (8-48 kHz)",
        summary="No-reference naturalness MOS (TTS, VC, natural speech) at the native rate, no "
        "resampling: an SSL model with a sampling-frequency-independent first layer and a UTMOS-style "
        "head. No released weights: train with `torchmos train sfi-distill` and `torchmos train "
        "msr-utmos`, or convert the authors' Lightning checkpoint.",
        weights=None,
        sample_rate=0,  # native: any rate, never resampled
        mode="nr",
        domain="synthetic",
        higher_is_better=True,
        score_range=(1.0, 5.0),
        min_seconds=0.1,
        licence="MIT (the authors' code, sarulab-speech/msr-utmos); weights: those you train or convert",
        citation=_MSR_UTMOS_CITATION,
        homepage="https://github.com/sarulab-speech/msr-utmos",
    )
)
