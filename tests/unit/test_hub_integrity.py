"""Weights are what they claim: no partial download is ever kept or trusted.

A card without a published checksum is trusted on first use, so the first download must
be whole. These tests serve cut-short files in every way a server can (no Content-Length
and an early close, a Content-Length smaller than the file, a chunked transfer that
stops), a changed file on re-download, a poisoned record left by an older torchmos, and
orphan temporary files left by a killed process.

Most servers here are :class:`RawServer`, which writes raw bytes to the socket (the test
chooses the HTTP framing, or its absence) and then closes the connection.
"""

from __future__ import annotations

import json
import os
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator

import filelock
import pytest
import torch

from tests.helpers import card, leftovers, sha, torch_zip
from torchmos import hub
from torchmos.hub import HubError, ModelCard, resolve

pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture(scope="module")
def ckpt() -> bytes:
    return torch_zip(0)


# ----------------------------------------------------------------------------- servers

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n"


def no_length(body: bytes) -> bytes:
    """A response without Content-Length: the body ends when the server closes."""
    return _HEAD + b"\r\n" + body


def chunked(body: bytes, size: int = 4096, last: bool = True) -> bytes:
    """A chunked response; ``last=False`` leaves out the terminating zero-size chunk."""
    out = _HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), size):
        out += b"%x\r\n" % len(body[i : i + size]) + body[i : i + size] + b"\r\n"
    return out + (b"0\r\n\r\n" if last else b"")


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class RawServer:
    """A TCP server on 127.0.0.1 that answers a GET for a path with the raw bytes set for
    it (status line, headers and body, as the test wrote them), then closes cleanly."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        lock = threading.Lock()
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                words = self.rfile.readline(65537).split()
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # read the whole request, so that closing sends FIN, not RST
                path = words[1].decode("latin-1") if len(words) > 1 else ""
                with lock:
                    owner.gets[path] += 1
                    raw = owner.routes.get(path, _NOT_FOUND)
                try:
                    self.wfile.write(raw)
                except OSError:
                    pass

        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self._thread = threading.Thread(target=self.srv.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def add(self, path: str, raw: bytes) -> str:
        self.routes[path] = raw
        return f"http://127.0.0.1:{self.srv.server_address[1]}{path}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    srv = RawServer()
    try:
        yield srv
    finally:
        srv.close()


# ----------------------------------------------------------------------------- cut short


def test_no_length_early_close_is_never_trusted(tmp_home, raw_server, ckpt):
    """The server sends half the file, no Content-Length, and closes: to HTTP that is a
    complete response. The torch zip has no central directory, so it is refused, and no
    file, record or temporary file stays behind; the whole file is trusted later."""
    url = raw_server.add("/w.pt", no_length(ckpt[: len(ckpt) // 2]))
    c = card([url])
    with pytest.raises(HubError, match=rf"{url}: download cut short .*central directory"):
        resolve(c)
    assert leftovers(tmp_home / "testcard") == []
    raw_server.add("/w.pt", no_length(ckpt))  # the same server, now whole: accepted and recorded
    path = resolve(c)
    assert path.read_bytes() == ckpt
    assert path.with_name("weights.pt.sha256").read_text().split()[0] == sha(ckpt)
    assert hub.load_checkpoint(path)["seed"] == 0


def test_no_length_whole_file_is_trusted(tmp_home, raw_server, ckpt):
    """A server that sends no length but the whole file keeps working."""
    c = card([raw_server.add("/w.pt", no_length(ckpt))])
    path = resolve(c)
    assert path.read_bytes() == ckpt
    assert leftovers(path.parent) == ["weights.pt", "weights.pt.sha256"]
    assert resolve(c) == path and raw_server.gets["/w.pt"] == 1


def test_content_length_smaller_than_the_file_is_never_trusted(tmp_home, file_server, ckpt):
    """A wrong Content-Length, smaller than the file: HTTP reads exactly that many bytes and
    the lengths agree, but the zip is cut short."""
    url = file_server.add("/w.pt", ckpt, content_length=len(ckpt) - 300)
    with pytest.raises(HubError, match=rf"{url}: download cut short"):
        resolve(card([url]))
    assert leftovers(tmp_home / "testcard") == []


@pytest.mark.parametrize("how", ["between-chunks", "inside-a-chunk"])
def test_chunked_transfer_cut_short(tmp_home, raw_server, ckpt, how):
    """A chunked transfer that stops before its terminating chunk ends with IncompleteRead:
    an error, so nothing is recorded or kept."""
    raw = chunked(ckpt[:20000], last=False) if how == "between-chunks" else chunked(ckpt)[:20000]
    url = raw_server.add("/w.pt", raw)
    with pytest.raises(HubError, match=rf"{url}: IncompleteRead"):
        resolve(card([url]))
    assert leftovers(tmp_home / "testcard") == []


def test_chunked_transfer_whole(tmp_home, raw_server):
    """A complete chunked transfer is delimited (its end is marked), so even a file whose
    format torchmos cannot check is accepted."""
    data = os.urandom(30000)
    path = resolve(card([raw_server.add("/w.bin", chunked(data))], filename="w.bin"))
    assert path.read_bytes() == data
    assert path.with_name("w.bin.sha256").read_text().split()[0] == sha(data)


def test_no_length_and_no_checkable_format_is_refused(tmp_home, raw_server, ckpt):
    """No length and a format whose end cannot be checked: there is no evidence the file is
    whole, so it is not trusted; a pinned sha256 is evidence, and then it is."""
    data = os.urandom(30000)
    url = raw_server.add("/w.bin", no_length(data))
    c = card([url], filename="w.bin")
    refused = r"no Content-Length.*cannot tell whether it arrived whole.*sha256="
    with pytest.raises(HubError, match=refused):
        resolve(c)
    assert leftovers(tmp_home / "testcard") == []
    path = resolve(c, sha256=sha(data))
    assert path.read_bytes() == data
    assert path.with_name("w.bin.sha256").read_text().split()[0] == sha(data)


def _safetensors(n: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    data = torch.arange(n, dtype=torch.float32).numpy().tobytes()
    return struct.pack("<Q", len(header)) + header + data


def test_safetensors_cut_short(tmp_home, raw_server):
    data = _safetensors(5000)
    for cut in (len(data) - 4, 40):  # in the tensor data; in the header
        url = raw_server.add("/m.safetensors", no_length(data[:cut]))
        with pytest.raises(HubError, match=rf"{url}: download cut short"):
            resolve(card([url], filename="m.safetensors"))
        assert leftovers(tmp_home / "testcard") == []
    raw_server.add("/m.safetensors", no_length(data))
    path = resolve(card([url], filename="m.safetensors"))
    assert path.read_bytes() == data


# ----------------------------------------------------------------------------- records


def test_redownload_is_checked_against_the_record(tmp_home, raw_server, ckpt):
    """The weights are deleted but their record stays: a re-download must match the record.
    A different file is refused with the record's name and how to reset it."""
    url = raw_server.add("/w.pt", no_length(ckpt))
    c = card([url])
    path = resolve(c)
    record = path.with_name("weights.pt.sha256")
    path.unlink()
    raw_server.add("/w.pt", no_length(torch_zip(1)))  # the server now has something else
    with pytest.raises(HubError, match=r"recorded at first download") as info:
        resolve(c)
    msg = str(info.value)
    assert str(record) in msg and "torchmos.hub.forget('testcard')" in msg
    assert leftovers(path.parent) == ["weights.pt.sha256"]
    assert record.read_text().split()[0] == sha(ckpt)  # the record is not rewritten
    raw_server.add("/w.pt", no_length(ckpt))  # the recorded release is back
    assert resolve(c).read_bytes() == ckpt


def test_poisoned_record_is_detected_and_forget_resets_it(tmp_home, raw_server, ckpt):
    """An older torchmos kept half a file and recorded its hash. The hash matches, yet the
    file is refused as cut short, naming both files and ``forget``; ``forget`` removes
    them and the next call downloads the whole file."""
    folder = tmp_home / "testcard"
    folder.mkdir()
    half = ckpt[: len(ckpt) // 2]
    (folder / "weights.pt").write_bytes(half)
    (folder / "weights.pt.sha256").write_text(f"{sha(half)}  weights.pt\n")
    c = card([raw_server.add("/w.pt", no_length(ckpt))])
    with pytest.raises(HubError, match=r"cut short") as info:
        resolve(c)
    msg = str(info.value)
    assert str(folder / "weights.pt.sha256") in msg and "torchmos.hub.forget('testcard')" in msg
    assert raw_server.gets["/w.pt"] == 0
    removed = hub.forget(c)
    assert sorted(p.name for p in removed) == ["weights.pt", "weights.pt.sha256"]
    assert leftovers(folder) == []
    assert hub.forget(c) == []  # nothing left to forget
    path = resolve(c)
    assert path.read_bytes() == ckpt
    assert path.with_name("weights.pt.sha256").read_text().split()[0] == sha(ckpt)


def test_forget_by_name_and_cards_without_weights(tmp_home, monkeypatch):
    monkeypatch.setitem(hub.CARDS, "testcard", card())
    assert hub.forget("testcard") == []  # no folder yet
    none = ModelCard(name="mine", family="test", title="", summary="", weights=None,
                     sample_rate=16000)
    assert hub.forget(none) == []


# ----------------------------------------------------------------------------- orphans


def test_orphan_temporary_files_are_removed_on_the_next_download(tmp_home, file_server, ckpt):
    """A killed process left its temporary weights and record files; the next download
    removes them (under the lock), and nothing else in the folder."""
    folder = tmp_home / "testcard"
    folder.mkdir()
    for name in ("weights.pt.k3j_x9qa.part", "weights.pt.sha256.0abcdefg.part",
                 "other.pt.zzzz1234.part", "notes.txt"):
        (folder / name).write_bytes(b"left behind")
    path = resolve(card([file_server.add("/w.pt", ckpt)]))
    assert path.read_bytes() == ckpt
    kept = ["notes.txt", "other.pt.zzzz1234.part"]
    assert leftovers(folder) == kept + ["weights.pt", "weights.pt.sha256"]
    (folder / "weights.pt.zzz.part").write_bytes(b"left behind")
    hub.forget(card())
    assert leftovers(folder) == kept


def test_no_cleanup_while_another_process_holds_the_lock(tmp_home, file_server, ckpt):
    """Another download holds the lock and is writing its temporary file: a second caller
    waits, leaves that file alone, and then uses the weights the first one finished."""
    folder = tmp_home / "testcard"
    folder.mkdir()
    target = folder / "weights.pt"
    live = folder / "weights.pt.live1234.part"
    url = file_server.add("/w.pt", ckpt)
    c = card([url], sha(ckpt))
    holder = filelock.FileLock(str(target) + ".lock")  # its own descriptor: a separate flock
    holder.acquire()
    result: dict[str, object] = {}

    def second() -> None:
        try:
            result["path"] = resolve(c)
        except Exception as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=second, daemon=True)
    try:
        live.write_bytes(ckpt[:1000])
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), result  # waiting for the lock
        assert live.read_bytes() == ckpt[:1000]  # untouched
        with open(live, "ab") as f:
            f.write(ckpt[1000:])
        os.replace(live, target)
    finally:
        holder.release()
        t.join(10)
    assert result == {"path": target}
    assert target.read_bytes() == ckpt and file_server.gets["/w.pt"] == 0


# ----------------------------------------------------------------------------- pins


def test_pinned_sha256_for_a_users_own_checkpoint(tmp_home, tmp_path):
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"my weights")
    c = card()
    assert resolve(c, checkpoint=mine, sha256=f"  {sha(b'my weights').upper()}\n") == mine
    assert resolve(c, checkpoint=mine, sha256="sha256:" + sha(b"my weights")) == mine
    with pytest.raises(HubError, match=rf"checkpoint {mine}: sha256 .* does not match the pinned"):
        resolve(c, checkpoint=mine, sha256=sha(b"other"))
    for bad in ("abc", sha(b"x")[:-1] + "g", "sha256:" + sha(b"my weights")[:50]):
        with pytest.raises(HubError, match=r"sha256=.* is not a sha256 checksum \(64 hexadecimal"):
            resolve(c, checkpoint=mine, sha256=bad)
