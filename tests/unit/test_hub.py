"""Unit tests of torchmos.hub: model cards, the resolver, downloads, checkpoint loading.

Downloads go to a real ``http.server`` on 127.0.0.1 (the ``file_server`` fixture); the
cache is a fresh ``TORCHMOS_HOME`` per test (``tmp_home``). Cards are built per test and
never registered globally.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import card, free_port, leftovers, sha
from torchmos import hub
from torchmos.hub import HubError, ModelCard, WeightFile, load_checkpoint, local_status, resolve

pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture(scope="module")
def ckpt_bytes() -> bytes:
    """A real, small torch checkpoint (a state dict and some metadata)."""
    g = torch.Generator().manual_seed(0)
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.randn(8, 4, generator=g), "b": torch.zeros(4)}, "epoch": 3}, buf)
    return buf.getvalue()


# ============================================================================ download


@pytest.mark.parametrize("progress", [None, False, True])
def test_download_with_right_checksum(tmp_home, file_server, ckpt_bytes, progress):
    url = file_server.add("/w.pt", ckpt_bytes)
    c = card([url], sha(ckpt_bytes))
    path = resolve(c, progress=progress)
    target = tmp_home / "testcard" / "weights.pt"
    assert path == target
    assert path.read_bytes() == ckpt_bytes
    assert leftovers(target.parent) == ["weights.pt"]  # no .part, no record (the card has a checksum)
    assert file_server.gets["/w.pt"] == 1
    sd = load_checkpoint(path)
    assert sd["epoch"] == 3 and sd["state_dict"]["w"].shape == (8, 4)
    # second call: from the cache, verified, no request
    assert resolve(c) == target
    assert file_server.gets["/w.pt"] == 1
    assert local_status(c) == "cache"


def test_download_random_bytes_several_blocks(tmp_home, file_server):
    data = os.urandom(3 * (1 << 20) + 123)  # several read blocks
    url = file_server.add("/big.bin", data)
    path = resolve(card([url], sha(data), filename="big.bin"))
    assert path.read_bytes() == data


def test_download_wrong_checksum_leaves_nothing(tmp_home, file_server, ckpt_bytes):
    url = file_server.add("/w.pt", ckpt_bytes)
    c = card([url], sha(b"another release"))
    with pytest.raises(HubError, match=rf"{url}: downloaded file has sha256 {sha(ckpt_bytes)}, expected {sha(b'another release')}") as info:
        resolve(c)
    assert f"place it at {tmp_home / 'testcard' / 'weights.pt'}" in str(info.value)
    assert leftovers(tmp_home / "testcard") == []
    assert local_status(c) == "missing"


def test_download_server_down(tmp_home):
    url = f"http://127.0.0.1:{free_port()}/w.pt"
    c = card([url], sha(b"x"))
    with pytest.raises(HubError, match="could not download weights for 'testcard'") as info:
        resolve(c)
    msg = str(info.value)
    assert url in msg
    assert f"Download the file by hand and place it at {tmp_home / 'testcard' / 'weights.pt'}" in msg
    assert "--checkpoint PATH on the command line" in msg and "checkpoint=PATH in Python" in msg
    assert leftovers(tmp_home / "testcard") == []


def test_download_falls_back_to_the_next_url(tmp_home, file_server, ckpt_bytes):
    missing = file_server.url("/missing.pt")  # 404
    broken = file_server.add("/broken.pt", b"oops", status=500)
    good = file_server.add("/w.pt", ckpt_bytes)
    path = resolve(card([missing, broken, good], sha(ckpt_bytes)))
    assert path.read_bytes() == ckpt_bytes
    assert [file_server.gets[p] for p in ("/missing.pt", "/broken.pt", "/w.pt")] == [1, 1, 1]


def test_download_all_urls_fail_lists_each(tmp_home, file_server):
    a, b = file_server.url("/a.pt"), file_server.add("/b.pt", b"", status=503)
    with pytest.raises(HubError) as info:
        resolve(card([a, b], sha(b"x")))
    msg = str(info.value)
    assert f"{a}: HTTPError: HTTP Error 404" in msg
    assert f"{b}: HTTPError: HTTP Error 503" in msg


def test_download_bad_mirror_then_good_one(tmp_home, file_server, ckpt_bytes):
    """A mirror serving the wrong bytes or cutting the transfer short does not stop the
    resolver from trying the next one."""
    wrong = file_server.add("/wrong.pt", b"a different release")
    short = file_server.add("/short.pt", ckpt_bytes[:100], content_length=len(ckpt_bytes))
    good = file_server.add("/w.pt", ckpt_bytes)
    path = resolve(card([wrong, short, good], sha(ckpt_bytes)))
    assert path.read_bytes() == ckpt_bytes
    assert leftovers(path.parent) == ["weights.pt"]


def test_incomplete_download(tmp_home, file_server, ckpt_bytes):
    url = file_server.add("/w.pt", ckpt_bytes, content_length=len(ckpt_bytes) + 1000)
    for c in (card([url], sha(ckpt_bytes)), card([url], None)):  # with and without a checksum
        with pytest.raises(HubError, match=rf"{url}: download incomplete \({len(ckpt_bytes)} of {len(ckpt_bytes) + 1000} bytes\)"):
            resolve(c)
        assert leftovers(tmp_home / "testcard") == []  # no file, no .part, no record


def test_server_that_speaks_no_http(tmp_home):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(10)

    def answer():
        try:
            conn, _ = srv.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        except OSError:
            pass

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/w.pt"
        with pytest.raises(HubError, match=rf"{url}: BadStatusLine"):
            resolve(card([url], sha(b"x")))
    finally:
        t.join(5)
        srv.close()
    assert leftovers(tmp_home / "testcard") == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_failed_downloads_leak_no_file_descriptors(tmp_home, file_server):
    def open_in_cache() -> list[str]:  # our descriptors on files in the cache (the server's sockets vary)
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_home)) and not target.endswith(".lock"):
                out.append(target)
        return out

    c = card([file_server.url("/missing.pt")], sha(b"x"))
    for _ in range(3):
        with pytest.raises(HubError):
            resolve(c)
    assert open_in_cache() == []


# ============================================================================ checksums


def test_trust_on_first_use(tmp_home, file_server, ckpt_bytes):
    url = file_server.add("/w.pt", ckpt_bytes)
    c = card([url], None)
    path = resolve(c)
    record = path.with_name("weights.pt.sha256")
    assert record.read_text() == f"{sha(ckpt_bytes)}  weights.pt\n"
    assert leftovers(path.parent) == ["weights.pt", "weights.pt.sha256"]
    assert resolve(c) == path  # verified against the record
    assert file_server.gets["/w.pt"] == 1
    # the file changes behind our back: refused, naming the record
    path.write_bytes(bytes([ckpt_bytes[0] ^ 1]) + ckpt_bytes[1:])
    with pytest.raises(HubError, match=r"does not match .* recorded at first download .*weights\.pt\.sha256.*delete it"):
        resolve(c)
    assert file_server.gets["/w.pt"] == 1  # no silent re-download


def test_trust_on_first_use_record_exists_before_the_file_appears(tmp_home, file_server, ckpt_bytes, monkeypatch):
    """A process that finds the weights in the cache (without taking the lock) must also
    find their record, or it would skip verification (or read a half-written record)."""
    c = card([file_server.add("/w.pt", ckpt_bytes)], None)
    target = tmp_home / "testcard" / "weights.pt"
    record = target.with_name("weights.pt.sha256")
    real_replace = os.replace
    seen = []

    def spy(src, dst):
        if Path(dst) == target:
            seen.append(record.is_file() and record.read_text().startswith(sha(ckpt_bytes)))
        return real_replace(src, dst)

    monkeypatch.setattr(hub.download.os, "replace", spy)  # the os module the downloader uses
    resolve(c)
    assert seen == [True]


def test_trust_on_first_use_malformed_record(tmp_home, file_server, ckpt_bytes):
    c = card([file_server.add("/w.pt", ckpt_bytes)], None)
    path = resolve(c)
    record = path.with_name(path.name + ".sha256")
    for text in ("", "not-a-checksum  weights.pt\n"):
        record.write_text(text)
        with pytest.raises(HubError, match=r"weights\.pt\.sha256: not a sha256 record"):
            resolve(c)


def test_user_pinned_sha256_overrides_the_card(tmp_home, file_server, ckpt_bytes):
    url = file_server.add("/w.pt", ckpt_bytes)
    # the card says something else (e.g. an older release): the pin wins
    c = card([url], sha(b"old release"))
    assert resolve(c, sha256=sha(ckpt_bytes).upper()).read_bytes() == ckpt_bytes
    with pytest.raises(HubError, match=r"does not match .* model card 'testcard'"):
        resolve(c)  # without the pin, the card's checksum applies to the cached file
    with pytest.raises(HubError, match=r"does not match .* the sha256= you pinned.*fix the pinned checksum"):
        resolve(c, sha256=sha(b"something else"))


def test_user_pinned_sha256_mismatch_on_download(tmp_home, file_server, ckpt_bytes):
    c = card([file_server.add("/w.pt", ckpt_bytes)], sha(ckpt_bytes))
    with pytest.raises(HubError, match=rf"expected {sha(b'pinned')}"):
        resolve(c, sha256=sha(b"pinned"))
    assert leftovers(tmp_home / "testcard") == []


def test_user_pinned_download_of_a_card_without_checksum_is_recorded(tmp_home, file_server, ckpt_bytes):
    c = card([file_server.add("/w.pt", ckpt_bytes)], None)
    path = resolve(c, sha256=sha(ckpt_bytes))
    assert path.with_name("weights.pt.sha256").read_text().split()[0] == sha(ckpt_bytes)
    path.write_bytes(b"tampered")
    with pytest.raises(HubError, match="recorded at first download"):
        resolve(c)  # later, without the pin


def test_card_checksum_in_upper_case(tmp_home, file_server, ckpt_bytes):
    c = card([file_server.add("/w.pt", ckpt_bytes)], sha(ckpt_bytes).upper())
    path = resolve(c)
    assert resolve(c) == path  # the cached file verifies too


def test_sha256sum(tmp_path):
    data = os.urandom(5000)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hub.sha256sum(p) == sha(data)
    assert hub.sha256sum(p, chunk=7) == sha(data)


# ============================================================================ offline, explicit, package


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_offline_never_touches_the_server(offline, file_server, ckpt_bytes, monkeypatch, value):
    monkeypatch.setenv("TORCHMOS_OFFLINE", value)
    url = file_server.add("/w.pt", ckpt_bytes)
    c = card([url], sha(ckpt_bytes))
    target = offline / "testcard" / "weights.pt"
    with pytest.raises(HubError) as info:
        resolve(c)
    msg = str(info.value)
    assert "TORCHMOS_OFFLINE is set" in msg
    assert f"Download {url} (sha256 {sha(ckpt_bytes)}) and place it at {target}" in msg
    assert sum(file_server.gets.values()) == 0
    assert not target.exists()
    # a file placed there by hand is used, offline
    target.parent.mkdir(parents=True)
    target.write_bytes(ckpt_bytes)
    assert resolve(c) == target
    assert sum(file_server.gets.values()) == 0


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_offline_off_values_download(tmp_home, file_server, ckpt_bytes, monkeypatch, value):
    monkeypatch.setenv("TORCHMOS_OFFLINE", value)
    url = file_server.add("/w.pt", ckpt_bytes)
    resolve(card([url], sha(ckpt_bytes)))
    assert file_server.gets["/w.pt"] == 1


def test_offline_error_suggests_the_package(offline):
    c = card(["https://example.invalid/w.pt"], None, package=("distillmos", "distillmos/weights/nope.pt"))
    with pytest.raises(HubError, match=r"or install the Python package 'distillmos'"):
        resolve(c)


def test_card_without_urls(tmp_home):
    with pytest.raises(HubError, match=rf"It has no download URL\. Obtain the file and place it at {tmp_home / 'testcard' / 'weights.pt'}"):
        resolve(card([], None))


def test_card_without_weights(tmp_home, tmp_path):
    c = ModelCard(name="mine", family="test", title="", summary="", weights=None, sample_rate=16000)
    with pytest.raises(HubError, match="has no released weights; give a weight file .*--checkpoint PATH.*checkpoint=PATH in Python"):
        resolve(c)
    assert local_status(c) == "train your own"
    p = tmp_path / "trained.pt"
    p.write_bytes(b"x")
    assert resolve(c, checkpoint=p) == p


def test_explicit_checkpoint_wins(tmp_home, file_server, ckpt_bytes, tmp_path):
    url = file_server.add("/w.pt", ckpt_bytes)
    c = card([url], sha(ckpt_bytes))
    cached = tmp_home / "testcard" / "weights.pt"
    cached.parent.mkdir()
    cached.write_bytes(ckpt_bytes)
    mine = tmp_path / "finetuned.pt"
    mine.write_bytes(b"my own weights")  # not the card's checksum: used as is
    assert resolve(c, checkpoint=mine) == mine
    assert resolve(c, checkpoint=str(mine), sha256=sha(b"my own weights")) == mine
    with pytest.raises(HubError, match=rf"checkpoint {mine}: sha256 {sha(b'my own weights')} does not match the pinned"):
        resolve(c, checkpoint=mine, sha256=sha(ckpt_bytes))
    with pytest.raises(HubError, match=rf"checkpoint {tmp_path / 'nope.pt'}: no such file"):
        resolve(c, checkpoint=tmp_path / "nope.pt")
    assert sum(file_server.gets.values()) == 0


def test_explicit_checkpoint_expands_user(tmp_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.pt").write_bytes(b"x")
    assert resolve(card(), checkpoint="~/w.pt") == tmp_path / "w.pt"


def _distillmos_file() -> Path:
    dist = importlib.metadata.distribution("distillmos")
    return Path(str(dist.locate_file("distillmos/weights/distill_mos_v7.pt")))


def test_package_file_found_when_cache_is_empty(offline):
    real = _distillmos_file()
    assert real.is_file(), "the distillmos distribution should ship its weights"
    assert local_status("distillmos") == "package"
    path = resolve("distillmos")  # offline: the package, not the network
    assert path == real
    sd = load_checkpoint(path)  # the official file loads with weights_only=True
    assert isinstance(sd["model"], dict) and len(sd["model"]) > 10
    assert all(isinstance(v, torch.Tensor) for v in sd["model"].values())
    assert not (offline / "distillmos").exists()  # nothing copied into the cache


def test_cache_wins_over_package(offline):
    cached = offline / "distillmos" / "distill_mos_v7.pt"
    cached.parent.mkdir()
    shutil.copyfile(_distillmos_file(), cached)
    assert local_status("distillmos") == "cache"
    assert resolve("distillmos") == cached
    cached.write_bytes(b"corrupt")  # the card's checksum applies to the cache
    with pytest.raises(HubError, match=r"does not match .* model card 'distillmos'"):
        resolve("distillmos")


def test_package_lookup_misses(tmp_home):
    assert hub._package_path(WeightFile("x.pt", package=("no-such-distribution-xyz", "x.pt"))) is None
    assert hub._package_path(WeightFile("x.pt", package=("distillmos", "distillmos/weights/nope.pt"))) is None
    assert hub._package_path(WeightFile("x.pt")) is None


def test_package_file_checked_against_pin(offline):
    with pytest.raises(HubError, match="the sha256= you pinned"):
        resolve("distillmos", sha256=sha(b"other"))


# ============================================================================ concurrency

CHILD = r"""
import importlib.util, json, sys, time, types
from pathlib import Path

# resolve() never uses torch (only load_checkpoint does); a stub spares eight interpreters
# the ~1.5 s CPU of importing it, so the eight really start together on a small machine.
sys.modules["torch"] = types.ModuleType("torch")
spec = importlib.util.spec_from_file_location("torchmos_hub_under_test", sys.argv[1])
hub = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = hub
spec.loader.exec_module(hub)
card = hub.ModelCard(name="race", family="test", title="", summary="", sample_rate=16000,
                     weights=hub.WeightFile("w.pt", urls=(sys.argv[2],), sha256=sys.argv[3] or None))
Path(sys.argv[5]).touch()  # ready
go = Path(sys.argv[4])
while not go.exists():
    time.sleep(0.002)
t0 = time.time()
try:
    path = hub.resolve(card)
    t1 = time.time()
    print(json.dumps({"path": str(path), "sha": hub.sha256sum(path), "t0": t0, "t1": t1}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"""


@pytest.mark.parametrize("with_checksum", [True, False], ids=["card-sha256", "trust-on-first-use"])
def test_eight_processes_download_once(tmp_home, tmp_path, file_server, with_checksum):
    data = os.urandom(1 << 20)
    url = file_server.add("/w.pt", data, delay=0.3)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "TORCHMOS_HOME": str(tmp_home), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TORCHMOS_OFFLINE", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, hub.__file__, url, sha(data) if with_checksum else "",
             str(sync / "go"), str(sync / f"ready{i}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(8)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(list(sync.glob("ready*"))) < 8:
            assert time.monotonic() < deadline, "children did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.01)
        (sync / "go").touch()
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    target = tmp_home / "race" / "w.pt"
    assert all("error" not in r for r in results), results
    assert {r["path"] for r in results} == {str(target)}
    assert {r["sha"] for r in results} == {sha(data)}
    assert file_server.gets["/w.pt"] == 1
    # they really raced: most were already waiting when the (slow) download finished
    first_done = min(r["t1"] for r in results)
    assert sum(r["t0"] < first_done for r in results) >= 4
    expected = ["w.pt"] if with_checksum else ["w.pt", "w.pt.sha256"]
    assert leftovers(target.parent) == expected


# ============================================================================ load_checkpoint


class Gadget:
    """A custom class: weights_only=True must refuse to unpickle it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))  # would run at load time without weights_only


def test_load_checkpoint_refuses_custom_classes(tmp_path):
    marker = tmp_path / "code-ran"
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "gadget": Gadget(str(marker))}, p)
    with pytest.raises(HubError, match=rf"^{p}: refused: the file holds a Python object other than tensors") as info:
        load_checkpoint(p)
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_load_checkpoint_dict_of_tensors(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.arange(3), "meta": {"epoch": 2, "name": "x"}}
    p = tmp_path / "ok.pt"
    torch.save(sd, p)
    got = load_checkpoint(str(p))
    assert set(got) == set(sd)
    assert torch.equal(got["a.weight"], sd["a.weight"]) and got["a.weight"].device.type == "cpu"
    assert got["meta"] == {"epoch": 2, "name": "x"}


def test_load_checkpoint_refuses_non_dict_and_missing(tmp_path):
    p = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), p)
    with pytest.raises(HubError, match=rf"{p}: expected a dict checkpoint, found Tensor"):
        load_checkpoint(p)
    with pytest.raises(HubError, match=rf"{tmp_path / 'nope.pt'}: no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(100))
    with pytest.raises(HubError, match=rf"{garbage}: cannot be loaded"):
        load_checkpoint(garbage)


def test_load_checkpoint_safetensors(tmp_path):
    st = importlib.import_module("safetensors.torch")  # a dependency
    sd = {"w": torch.randn(4, 4), "b": torch.zeros(4, dtype=torch.float16)}
    p = tmp_path / "model.safetensors"
    st.save_file(sd, str(p))
    got = load_checkpoint(p)
    assert set(got) == {"w", "b"} and torch.equal(got["w"], sd["w"]) and got["b"].dtype == torch.float16
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(HubError, match=rf"{bad}: not a valid \.safetensors file"):
        load_checkpoint(bad)


# ============================================================================ cards, cache dir


def test_get_card_unknown_lists_known_names():
    with pytest.raises(KeyError, match=r"unknown model 'nope'; known models: .*distillmos.*scoreq-nr-natural.*vqscore"):
        hub.get_card("nope")


def test_get_card_and_list_cards():
    c = card()
    assert hub.get_card(c) is c
    assert hub.get_card("distillmos").sample_rate == 16000
    names = [k.name for k in hub.list_cards()]
    assert names == sorted(names) and {"distillmos", "scoreq-nr-natural", "scoreq-ref-synthetic", "vqscore"} <= set(names)
    for k in hub.list_cards():
        assert k.mode in {"nr", "ref"} and k.score_range[0] < k.score_range[1] and k.citation


def test_register_in_a_scratch_registry(monkeypatch):
    monkeypatch.setattr(hub.cards, "CARDS", dict(hub.CARDS))  # the registry register() fills; restored after
    c = card(name="scratch-card")
    assert hub.register(c) is c
    assert hub.get_card("scratch-card") is c
    assert "scratch-card" in [k.name for k in hub.list_cards()]
    monkeypatch.undo()
    assert "scratch-card" not in hub.CARDS  # the real registry was never touched
    with pytest.raises(KeyError):
        hub.get_card("scratch-card")


def test_resolve_by_name(tmp_home, file_server, ckpt_bytes, monkeypatch):
    monkeypatch.setitem(hub.CARDS, "by-name", card([file_server.add("/w.pt", ckpt_bytes)], sha(ckpt_bytes), name="by-name"))
    assert resolve("by-name") == tmp_home / "by-name" / "weights.pt"
    assert local_status("by-name") == "cache"


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHMOS_HOME", str(tmp_path / "h"))
    assert hub.cache_dir() == tmp_path / "h"
    monkeypatch.setenv("HOME", str(tmp_path))
    for unset in (lambda: monkeypatch.delenv("TORCHMOS_HOME"), lambda: monkeypatch.setenv("TORCHMOS_HOME", "")):
        unset()
        assert hub.cache_dir() == tmp_path / ".cache" / "torchmos"


def test_local_status_missing(tmp_home):
    assert local_status(card(["http://127.0.0.1:9/w.pt"])) == "missing"


def test_local_file_looks_the_package_up_once(monkeypatch, tmp_home):
    """Model lookups stat the weight file on every call; the package's location is found
    once per process (importlib.metadata walks sys.path), the file's presence every time."""
    from torchmos.hub import download, local_file

    download._located.cache_clear()
    calls = []
    real = importlib.metadata.distribution
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: calls.append(name) or real(name))
    first = local_file("distillmos")
    assert first is not None and first.is_file() and local_file("distillmos") == first
    assert calls == ["distillmos"]
    assert local_file(card(["http://127.0.0.1:9/w.pt"])) is None
