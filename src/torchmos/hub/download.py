"""The one resolver: explicit path > cache > installed package > download (with a file
lock and a checksum). Nothing else in torchmos touches the network or the cache."""

from __future__ import annotations

import functools
import hashlib
import http.client
import importlib.metadata
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import filelock

from .cards import ModelCard, WeightFile, get_card
from .integrity import (
    HubError,
    _Expectation,
    _expected,
    _pin,
    _recorded,
    _remove_orphans,
    _reset_hint,
    _unlink,
    _verify,
    _whole,
    _write_atomic,
    sha256sum,
)

__all__ = ["CHECKPOINT_HINT", "cache_dir", "check_file", "forget", "local_status", "resolve"]


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
    p = _located(*wf.package)
    return p if p is not None and p.is_file() else None


@functools.lru_cache(maxsize=64)
def _located(dist_name: str, rel: str) -> Path | None:
    """Where an installed distribution keeps ``rel`` (looked up once per process: the
    metadata scan walks ``sys.path``, and model lookups ask on every call)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(rel)))


def local_file(card: str | ModelCard) -> Path | None:
    """The weight file a :func:`resolve` of ``card`` would use now without downloading
    (the cache, then the installed package), found without reading it; ``None`` if none.

    >>> local_file("distillmos").name
    'distill_mos_v7.pt'
    """
    card = get_card(card)
    if card.weights is None:
        return None
    cached = _cache_path(card)
    return cached if cached.is_file() else _package_path(card.weights)


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
    found = local_file(card)
    if found is None:
        return "missing"
    return "cache" if found == _cache_path(card) else "package"

