"""The one safe-name rule: stem, card, track and downloaded file names end up in paths, so each
must be one plain path component that cannot leave its folder.

A leaf module (it imports only the errors), so that `nn` (stem names of MSST configs), `zoo`
(card and file names) and the CLI (output names) share it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from separator.errors import ConfigError

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")


def is_safe_name(name: object) -> bool:
    """True if `name` is one plain file-name component that cannot leave its folder."""
    return isinstance(name, str) and bool(_SAFE.match(name)) and ".." not in name


def check_name(name: str, what: str = "stem name") -> str:
    """Return `name` if it is safe as one file-name component, else raise ConfigError."""
    if not is_safe_name(name):
        raise ConfigError(
            f"{what} {name!r} is not allowed: use letters, digits, '_', '-', '.' and '+' only "
            "(it becomes a file name and must not leave the output folder)"
        )
    return name


def safe_name(name: object, *, lower: bool = False) -> str:
    """`name` mapped to a safe one: other characters -> `_`, runs of dots -> one dot, leading and
    trailing `_.+-` dropped (so it starts with a letter or digit and never holds ".."); "" if
    nothing is left. "No Reverb" -> "No_Reverb" ("no_reverb" with `lower`)."""
    text = str(name).strip()
    safe = _UNSAFE_CHARS.sub("_", text.lower() if lower else text)
    return re.sub(r"\.{2,}", ".", safe).strip("_.+-")


def safe_stem_names(names: Sequence[object]) -> dict[str, str]:
    """{safe name: original name} in order, for stem names given freely (UVR/MSST configs:
    "No Reverb", "No Drum-Bass"), which are mapped, never refused: lower-case `safe_name`s; an
    empty result becomes `stem{i}`, names that collide after mapping get `_2`, `_3`, ...
    Cards record this mapping, so an output file can be traced to the stem its authors named."""
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        base = safe_name(name, lower=True) or f"stem{i}"
        safe, k = base, 2
        while safe in out:
            safe, k = f"{base}_{k}", k + 1
        out[safe] = str(name)
    return out
