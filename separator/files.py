"""Small file helpers every part shares: atomic writes, file modes, sha256, safe names, YAML.

Nothing here knows about models or audio; every other part of the package may import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from separator.errors import ConfigError

_BLOCK = 1 << 20


# --- writing -----------------------------------------------------------------------------------
def use_umask(path: str | os.PathLike) -> None:
    """Give a file made by `tempfile.mkstemp` (mode 0600) the mode a plain `open` would: 0666
    less the umask, so renamed outputs are as readable as any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def temp_beside(path: Path) -> Path:
    """A new, empty hidden temporary file in `path`'s folder (`.<name>.<random>.part`)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: Path, path: Path) -> Path:
    """Move a finished temporary file onto `path` (atomic rename) with the umask's mode."""
    use_umask(tmp)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on any
    failure (or Ctrl-C) it is deleted, so `path` never holds a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` through a temporary file and a rename."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


# --- hashes ------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


# --- YAML --------------------------------------------------------------------------------------
class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader plus `!!python/tuple` (MSST writes `freqs_per_bands` that way); every other
    Python tag stays an error."""


def _tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _tuple)


def plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists, recursively: what YAML and JSON write plainly."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping safely. Errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str = "config") -> dict[str, Any]:
    """Parse YAML text into a mapping (safe loader plus `!!python/tuple`). Errors name `where`."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}: not a valid config YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a YAML mapping at the top level")
    return data
