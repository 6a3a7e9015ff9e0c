"""The weights downloader against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from separator.errors import SeparatorError
from separator.zoo import download as zoo
from tests.loopback import PAYLOAD, Server

SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_cache_dir_env(cache: Path) -> None:
    assert zoo.cache_dir() == cache


def test_download_then_cached(server: Server, cache: Path) -> None:
    path = zoo.fetch(server.url(), SHA, progress=False)
    assert path == cache / "model.bin"
    assert path.read_bytes() == PAYLOAD
    assert not (cache / "model.bin.part").exists()
    assert len(server.requests) == 1
    assert zoo.fetch(server.url(), SHA, progress=False) == path
    assert len(server.requests) == 1  # the verified cached file needs no network
    assert zoo.verify(path, SHA) and not zoo.verify(path, "0" * 64)


def test_range_resume(server: Server, cache: Path) -> None:
    half = len(PAYLOAD) // 2
    (cache / "model.bin.part").write_bytes(PAYLOAD[:half])
    path = zoo.fetch(server.url(), SHA, progress=False)
    assert server.requests == [("/w/model.bin", f"bytes={half}-")]
    assert path.read_bytes() == PAYLOAD


def test_range_ignored_restarts_from_zero(server: Server, cache: Path) -> None:
    server.ignore_range = True
    (cache / "model.bin.part").write_bytes(b"garbage that must not survive")
    path = zoo.fetch(server.url(), SHA, progress=False)
    assert server.requests[0][1] == "bytes=29-"
    assert path.read_bytes() == PAYLOAD


def test_truncated_then_resumed(server: Server, cache: Path) -> None:
    server.truncate_at = 1000
    with pytest.raises(SeparatorError, match=f"truncated: got 1000 of {len(PAYLOAD)} bytes"):
        zoo.fetch(server.url(), SHA, progress=False)
    assert not (cache / "model.bin").exists()
    assert (cache / "model.bin.part").read_bytes() == PAYLOAD[:1000]
    server.truncate_at = None
    path = zoo.fetch(server.url(), SHA, progress=False)
    assert server.requests[-1][1] == "bytes=1000-"
    assert path.read_bytes() == PAYLOAD


def test_wrong_hash(server: Server, cache: Path) -> None:
    wrong = "ab" * 32
    with pytest.raises(SeparatorError) as err:
        zoo.fetch(server.url(), wrong, progress=False)
    assert wrong in str(err.value) and SHA in str(err.value)
    assert list(cache.iterdir()) == []  # neither the file nor a .part is left


def test_404(server: Server, cache: Path) -> None:
    url = server.url("/w/missing.bin")
    with pytest.raises(SeparatorError) as err:
        zoo.fetch(url, SHA, progress=False)
    assert "404" in str(err.value) and url in str(err.value)
    assert "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("how", ["argument", "env"])
def test_offline(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("SEPARATOR_OFFLINE", "1")
    with pytest.raises(SeparatorError) as err:
        zoo.fetch(server.url(), SHA, offline=True if how == "argument" else None)
    assert server.url() in str(err.value)
    assert str(cache / "model.bin") in str(err.value)
    assert server.requests == []


def test_offline_uses_verified_cache(server: Server, cache: Path) -> None:
    (cache / "model.bin").write_bytes(PAYLOAD)
    assert zoo.fetch(server.url(), SHA, offline=True).read_bytes() == PAYLOAD
    assert server.requests == []


def test_unpublished_hash_is_pinned(server: Server, cache: Path) -> None:
    with pytest.warns(UserWarning, match="pinned"):
        path = zoo.fetch(server.url(), None, progress=False)
    assert json.loads((cache / "pins.json").read_text()) == {server.url(): SHA}
    assert zoo.fetch(server.url(), None, progress=False) == path  # verified against the pin
    assert len(server.requests) == 1

    # A tampered cached file is never returned: it is deleted and the pinned file re-fetched.
    path.write_bytes(b"evil" + PAYLOAD[4:])
    with pytest.warns(UserWarning, match="did not match"):
        again = zoo.fetch(server.url(), None, progress=False)
    assert again.read_bytes() == PAYLOAD

    # If the server now serves different bytes, the pin refuses them.
    path.unlink()
    server.files["/w/model.bin"] = b"evil" + PAYLOAD[4:]
    with pytest.raises(SeparatorError, match=SHA):
        zoo.fetch(server.url(), None, progress=False)
    assert list(cache.iterdir()) == [cache / "pins.json"]


def test_unreachable(cache: Path) -> None:
    with socket.socket() as s:  # bind then close: a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(SeparatorError) as err:
        zoo.fetch(url, SHA, progress=False)
    message = str(err.value)
    assert url in message and "SEPARATOR_OFFLINE=1" in message and str(cache / "x.bin") in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/a/..", "http://127.0.0.1/a/%2E%2E", "http://127.0.0.1/a/%2Fetc"]
)
def test_unsafe_file_name(cache: Path, url: str) -> None:
    with pytest.raises(SeparatorError, match="safe file name"):
        zoo.fetch(url, SHA)


def test_bad_hash_argument(cache: Path) -> None:
    with pytest.raises(SeparatorError, match="64 hex"):
        zoo.fetch("http://127.0.0.1/x.bin", "nothex")


def test_part_too_long_restarts(server: Server, cache: Path) -> None:
    # A .part as long as the file gets 416 for its Range; it is discarded and fetched again.
    (cache / "model.bin.part").write_bytes(b"x" * len(PAYLOAD))
    path = zoo.fetch(server.url(), SHA, progress=False)
    assert [r[1] for r in server.requests] == [f"bytes={len(PAYLOAD)}-", None]
    assert path.read_bytes() == PAYLOAD


# --- mirrors -------------------------------------------------------------------------------------


def test_first_host_404_then_mirror_serves_checked_bytes(
    server: Server, mirror: Server, cache: Path
) -> None:
    del server.files["/w/model.bin"]  # the first host lost the file
    urls = [server.url(), mirror.url()]
    path = zoo.fetch(urls, SHA, progress=False)
    assert path == cache / "model.bin" and path.read_bytes() == PAYLOAD
    assert [r[0] for r in server.requests] == ["/w/model.bin"]  # tried first, got 404
    assert len(mirror.requests) == 1
    assert zoo.fetch(urls, SHA, progress=False) == path  # cached: no request at all
    assert len(server.requests) + len(mirror.requests) == 2


def test_mirror_with_other_bytes_is_refused(server: Server, mirror: Server, cache: Path) -> None:
    server.files["/w/model.bin"] = b"evil" + PAYLOAD[4:]  # the first host serves other bytes
    path = zoo.fetch([server.url(), mirror.url()], SHA, progress=False)
    assert path.read_bytes() == PAYLOAD  # the mismatch was deleted, the mirror's bytes kept
    mirror.files["/w/model.bin"] = b"evil" + PAYLOAD[4:]
    path.unlink()
    with pytest.raises(SeparatorError) as err:
        zoo.fetch([server.url(), mirror.url()], SHA, progress=False)
    message = str(err.value)
    assert "all 2 URLs failed" in message and message.count("sha256 mismatch") == 2
    assert "\n" not in message and list(cache.iterdir()) == []


def test_unpublished_hash_is_pinned_under_the_first_url(
    server: Server, mirror: Server, cache: Path
) -> None:
    del server.files["/w/model.bin"]
    with pytest.warns(UserWarning, match="pinned"):
        zoo.fetch([server.url(), mirror.url()], None, progress=False)
    assert json.loads((cache / "pins.json").read_text()) == {server.url(): SHA}
