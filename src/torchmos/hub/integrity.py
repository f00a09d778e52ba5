"""Checking weight files: checksums (published, pinned or recorded at first use), whole
files by their own structure, atomic writes and the cleanup of killed downloads."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .cards import ModelCard

__all__ = ["HubError", "sha256sum"]


class HubError(RuntimeError):
    """Weights could not be found, downloaded or verified. The message says what to do."""



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

