"""Downloads: a safe fetcher for model weights (sha256-checked, resumable, offline-aware).

A file is used only after its sha256 has been checked. When a card publishes no hash, the first
download is pinned in `cache_dir()/pins.json` (trust on first use) and every later use is checked
against that pin. Downloads go to `<dest>.part` and are renamed into place only once verified, so
a half-written or tampered file is never loaded. An interrupted download resumes with HTTP Range.

A file may have mirrors: `fetch([url, mirror, ...], sha256)` tries them in order until one gives
bytes with the expected hash. The first URL names the file (its pin and its cache name).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from platformdirs import user_cache_dir

from separator.errors import SeparatorError
from separator.files import atomic_write, sha256_file
from separator.names import is_safe_name

_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OFFLINE_HINT = (
    "on a machine with internet access download that URL and save the file as {dest} (it is "
    "checked before use), or set SEPARATOR_OFFLINE=1 to use the cache only"
)


class _Unreachable(SeparatorError):
    """No connection; `short` says so without the what-to-do hint (given once for mirrors)."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


def cache_dir() -> Path:
    """Where downloaded weights live: `$SEPARATOR_CACHE`, else the platform's user cache dir."""
    env = os.environ.get("SEPARATOR_CACHE")
    return Path(env) if env else Path(user_cache_dir("separator"))


def verify(path: Path, sha256: str) -> bool:
    """True if the file at `path` has the given sha256 (hex, case-insensitive)."""
    return sha256_file(path) == sha256.strip().lower()


def fetch(
    url: str | Sequence[str],
    sha256: str | None,
    *,
    dest: Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
    sha256_prefix: str | None = None,
) -> Path:
    """Return the local path of the file at `url`, downloading and verifying it if needed.

    `url` may be a list: the first URL and its mirrors, tried in order; every one is checked
    against the same hash. `sha256` is the published hash; None means "not published", in which
    case the hash of the first download is pinned (under the first URL) and later calls are
    checked against the pin. `sha256_prefix`: the leading hex digits that are published (demucs
    file names carry 8); every file must start with them, and the pin then needs no warning.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise SeparatorError("no URL to download from; the model card names none")
    for u in urls:
        _check_scheme(u)
    key = urls[0]
    prefix = _check_prefix(key, sha256_prefix)
    expected = _check_hash_arg(key, sha256) or pinned_sha256(key)
    dest = Path(dest) if dest is not None else cache_dir() / url_file_name(key)
    if dest.is_file():
        actual = sha256_file(dest)
        if expected is None and actual.startswith(prefix):
            _pin(key, actual, dest, quiet=bool(prefix))
            return dest
        if actual == expected and actual.startswith(prefix):
            return dest
        # A cached file that no longer matches is corrupt or tampered: never load it.
        dest.unlink()
        warnings.warn(
            f"{dest} did not match sha256 {expected or prefix + '...'} (got {actual}); "
            "downloading again",
            stacklevel=2,
        )
    if is_offline(offline):
        mirrors = f" (or a mirror: {', '.join(urls[1:])})" if len(urls) > 1 else ""
        raise SeparatorError(
            f"offline mode: {dest} is missing; download {key}{mirrors} by hand and save it as "
            f"{dest}"
        )
    return _download_any(urls, dest, (expected, prefix), progress)


def _download_any(
    urls: list[str], dest: Path, check: tuple[str | None, str], progress: bool
) -> Path:
    """Download the first of `urls` that gives the expected bytes into `dest`; on failure, the
    folders made for it are removed again and the error says what each URL did. `check`: the
    expected sha256 (None: pin the first download) and the published prefix ("" if none)."""
    expected, prefix = check
    failures = []
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    for u in urls:
        try:
            actual = _download_verified(u, dest, check, progress)
        except SeparatorError as e:
            if len(urls) == 1:
                _remove_empty(made)
                raise
            failures.append(getattr(e, "short", str(e)))
            continue
        if expected is None:
            _pin(urls[0], actual, dest, quiet=bool(prefix))
        os.replace(dest.with_name(dest.name + ".part"), dest)  # atomic: dest is verified
        return dest
    hint = _OFFLINE_HINT.format(dest=dest).replace("that URL", "one of them")
    _remove_empty(made)
    raise SeparatorError(
        f"all {len(urls)} URLs failed for {dest.name}: {'; '.join(failures)}; {hint}"
    )


def _download_verified(url: str, dest: Path, check: tuple[str | None, str], progress: bool) -> str:
    """Download `url` into `<dest>.part` and return its sha256, which must be the expected one
    (if given) and start with the published prefix. A mismatch deletes the .part; a mismatch
    after resuming (a .part left by another mirror or an older file) retries once from the
    start."""
    expected, prefix = check
    part = dest.with_name(dest.name + ".part")
    for attempt in (0, 1):
        resumed = part.is_file() and part.stat().st_size > 0
        _download(url, part, dest, progress)
        actual = sha256_file(part)
        if actual.startswith(prefix) and expected in (None, actual):
            return actual
        part.unlink()
        if not resumed or attempt:
            break
    raise SeparatorError(
        f"{url}: sha256 mismatch: expected {expected or prefix + '...'}, got {actual}; the "
        "download was deleted. Check the URL and hash in the model card"
    )


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download made (innermost first), if nothing else is there."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): leave it and its parents
            break


# --- download --------------------------------------------------------------------------------
def _download(url: str, part: Path, dest: Path, progress: bool, *, retried: bool = False) -> None:
    """Download `url` into `part`, resuming from its current size when the server allows."""
    start = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start and not retried:
            # The .part is not a prefix of the current file (it is too long): start over.
            part.unlink()
            return _download(url, part, dest, progress, retried=True)
        raise SeparatorError(
            f"{url}: HTTP {e.code} {e.reason}; check the URL in the model card"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        short = f"cannot download {url}: the network or host is unreachable ({reason})"
        raise _Unreachable(f"{short}; {_OFFLINE_HINT.format(dest=dest)}", short) from None
    with response:
        offset = _resume_offset(response, start)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        got, dropped = _copy(response, part, offset, total, progress, dest.name)
    if dropped and total is None:
        raise SeparatorError(
            f"{url}: connection dropped after {got} bytes; {part} was kept, run again to resume"
        )
    if total is not None and got < total:
        raise SeparatorError(
            f"{url}: truncated: got {got} of {total} bytes; {part} was kept, run again to resume"
        )


def _resume_offset(response: http.client.HTTPResponse, start: int) -> int:
    """Byte offset the response body starts at: `start` for a matching 206, else 0."""
    if response.status != 206:
        return 0  # the server ignored Range (200): restart from zero
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != start:
        raise SeparatorError(
            f"{response.url}: server answered a resume with a wrong Content-Range "
            f"({response.headers.get('Content-Range')!r}); delete the .part file and retry"
        )
    return start


def _copy(
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    total: int | None,
    progress: bool,
    label: str,
) -> tuple[int, bool]:
    """Write the body into `part` from `offset`; return (bytes now in it, connection dropped)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console = Console(stderr=True)
    bar = Progress(
        "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, disable=not (progress and sys.stderr.isatty()), transient=True,
    )  # fmt: skip
    got, dropped = offset, False
    part.parent.mkdir(parents=True, exist_ok=True)  # only once the server answered
    with bar, open(part, "r+b" if offset else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        task = bar.add_task(label, total=total, completed=offset)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException):
                # A dropped connection leaves a valid prefix in `part`, kept for resume.
                dropped = True
                break
            if not chunk:
                break
            f.write(chunk)
            got += len(chunk)
            bar.update(task, completed=got)
    return got, dropped


# --- hashes and pins -------------------------------------------------------------------------
def _check_hash_arg(url: str, sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256.fullmatch(value):
        raise SeparatorError(
            f"{url}: sha256 {sha256!r} is not 64 hex digits; fix the hash in the model card"
        )
    return value


def _check_prefix(url: str, prefix: str | None) -> str:
    value = (prefix or "").strip().lower()
    if prefix is not None and not re.fullmatch(r"[0-9a-f]{1,64}", value):
        raise SeparatorError(f"{url}: sha256 prefix {prefix!r} is not hex; fix the model card")
    return value


def _pins_path() -> Path:
    return cache_dir() / "pins.json"


def _load_pins() -> dict[str, str]:
    path = _pins_path()
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SeparatorError(f"{path}: unreadable pins file ({e}); delete it to re-pin") from None
    if not isinstance(pins, dict):
        raise SeparatorError(f"{path}: pins file is not a JSON object; delete it to re-pin")
    return pins


def pinned_sha256(url: str) -> str | None:
    """The hash pinned for `url` at its first download (no hash was published), if any."""
    return _load_pins().get(url)


def _pin(url: str, sha256: str, dest: Path, *, quiet: bool = False) -> None:
    """Record `sha256` for `url` so later uses are verified against it (trust on first use)."""
    pins = _load_pins()
    pins[url] = sha256
    path = _pins_path()
    # atomic, so a crash never leaves a half-written pins file
    atomic_write(path, json.dumps(pins, indent=2, sort_keys=True).encode())
    if quiet:  # a published prefix was checked: nothing to warn about
        return
    warnings.warn(
        f"{url}: no sha256 was published; pinned {sha256} for {dest.name} in {path}, "
        "later downloads must match it",
        stacklevel=3,  # point at fetch()'s caller
    )


# --- names and modes -------------------------------------------------------------------------
def url_file_name(url: str) -> str:
    """The last component of the URL path, refused unless it is one safe file name."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not is_safe_name(name) or name.endswith(".part") or name == "pins.json":
        raise SeparatorError(
            f"{url}: {name!r} is not a safe file name; pass dest= to choose where to save it"
        )
    return name


def _check_scheme(url: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise SeparatorError(f"{url}: only http(s) URLs can be downloaded; fix the model card")


def is_offline(offline: bool | None = None) -> bool:
    """`offline` if given, else SEPARATOR_OFFLINE=1 (or true/yes)."""
    if offline is not None:
        return offline
    return os.environ.get("SEPARATOR_OFFLINE", "").strip().lower() in ("1", "true", "yes")
