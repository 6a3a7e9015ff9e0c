"""A local HTTP server on 127.0.0.1 for download tests (a pytest plugin: `server`, `cache`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PAYLOAD = bytes(range(256)) * 64 + b"tail"  # 16 KiB + 4, not a multiple of any chunk size


class Server:
    """State the handler reads: files to serve, fault switches and a log of requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/w/model.bin": PAYLOAD}
        self.truncate_at: int | None = None  # write this many body bytes, then close
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.base = ""

    def url(self, path: str = "/w/model.bin") -> str:
        return self.base + path


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            start, rng = 0, self.headers.get("Range")
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if state.truncate_at is not None:
                chunk = chunk[: state.truncate_at]
                self.close_connection = True
            self.wfile.write(chunk)

    return Handler


@contextlib.contextmanager
def serving() -> Iterator[Server]:
    """A loopback HTTP server in a thread for the duration of the block."""
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server():
    with serving() as state:
        yield state


@pytest.fixture
def mirror():
    """A second, independent server (a mirror host)."""
    with serving() as state:
        yield state


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path))
    monkeypatch.delenv("SEPARATOR_OFFLINE", raising=False)
    return tmp_path
