"""Which model `separate` uses without `--model`.

The rule, over the cards (so it follows as cards are added): the strongest 4-stem model (stems
vocals, drums, bass, other) with a pinned sha256 and a reported SDR, ranked by its reported
`average` SDR (else the mean of its four stems). Today that is MSST's MUSDB18HQ BS-RoFormer.
`SEPARATOR_DEFAULT_MODEL`, or `default_model:` in the user config file (`config_path()`),
overrides the rule.

The chosen model is used when its weights are cached, or when the network is reachable (it is
downloaded once, with a progress bar). Offline, or when no host of its weights answers within a
few seconds, the embedded model in pretrained/ is used instead, and `DefaultChoice.reason` says
so in one line.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from platformdirs import user_config_dir

from separator.errors import SeparatorError
from separator.files import read_yaml
from separator.zoo.cards import Card, ModelCard
from separator.zoo.catalog import DEFAULT_MODEL, all_cards
from separator.zoo.download import is_offline
from separator.zoo.loader import is_cached

ENV = "SEPARATOR_DEFAULT_MODEL"
FOUR_STEMS = frozenset({"vocals", "drums", "bass", "other"})
PROBE_TIMEOUT_S = 3.0  # the README's first command must fall back quickly with no network


@dataclass(frozen=True)
class DefaultChoice:
    """The model to load and one line saying which model runs and why."""

    name: str
    reason: str
    fallback: bool = False  # the embedded model instead of the chosen one
    configured: bool = False  # named by SEPARATOR_DEFAULT_MODEL or the config file


def config_path() -> Path:
    """The user config file: `<platformdirs user config dir>/separator/config.yaml`."""
    return Path(user_config_dir("separator")) / "config.yaml"


def configured_default() -> tuple[str, str] | None:
    """(model name, where it was set) from SEPARATOR_DEFAULT_MODEL or the config file's
    `default_model`, or None."""
    name = os.environ.get(ENV, "").strip()
    if name:
        return name, ENV
    path = config_path()
    if not path.is_file():
        return None
    value = read_yaml(path).get("default_model")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SeparatorError(f"{path}: `default_model` must be a model name, got {value!r}")
    return value.strip(), str(path)


def four_stem_score(card: Card) -> float | None:
    """A 4-stem card's reported SDR: its `average`, else the mean of its four stems; None for
    other cards, cards without a published sha256 or URL, and cards without those figures."""
    if not isinstance(card, ModelCard) or set(card.stems) != FOUR_STEMS:
        return None
    if not card.urls or not card.weights.get("sha256"):
        return None
    sdr = {k: v for k, v in card.sdr.items() if isinstance(v, (int, float))}
    if "average" in sdr:
        return float(sdr["average"])
    if FOUR_STEMS <= set(sdr):
        return sum(float(sdr[s]) for s in FOUR_STEMS) / 4
    return None


def strongest_four_stem(cards: dict[str, Card] | None = None) -> ModelCard | None:
    """The card the rule picks (highest `four_stem_score`, ties by name), or None."""
    cards = all_cards() if cards is None else cards
    scored = [(s, n) for n, c in cards.items() if (s := four_stem_score(c)) is not None]
    if not scored:
        return None
    return cards[min(scored, key=lambda x: (-x[0], x[1]))[1]]


def choose_default(*, offline: bool | None = None, reachable=None) -> DefaultChoice:
    """The model `separate` uses without `--model` (see the module doc). `reachable(urls)` tells
    whether any host answers; the default probes with a short TCP connect."""
    configured = configured_default()
    if configured:
        name, where = configured
        return DefaultChoice(name, f"model: {name} (the default set by {where})", configured=True)
    best = strongest_four_stem()
    if best is None:
        return embedded("no 4-stem model card has a pinned sha256 and a reported SDR")
    score = four_stem_score(best)
    why = f"the strongest 4-stem model with a pinned sha256 (reported average SDR {score:.2f} dB)"
    if is_cached(best):
        return DefaultChoice(best.name, f"model: {best.name}, {why}")
    hint = f"`separator models download {best.name}` fetches it"
    if is_offline(offline):
        return embedded(f"offline, and the default {best.name} is not downloaded; {hint}")
    if not (reachable or hosts_reachable)(best.urls):
        return embedded(
            f"the network is unreachable and the default {best.name} is not downloaded; {hint}"
        )
    return DefaultChoice(best.name, f"model: {best.name}, {why}; downloading it once")


def embedded(why: str) -> DefaultChoice:
    """The embedded model, with the reason it is used instead of the default."""
    return DefaultChoice(DEFAULT_MODEL, f"model: {DEFAULT_MODEL} (embedded): {why}", fallback=True)


def hosts_reachable(urls, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the host of any URL opens within `timeout` seconds in all.
    Name lookups cannot be given a timeout, so the probes run in daemon threads."""
    hosts = {
        (u.hostname, u.port or (443 if u.scheme == "https" else 80)) for u in map(urlsplit, urls)
    }
    ok = threading.Event()

    def probe(host: str, port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    threads = [threading.Thread(target=probe, args=h, daemon=True) for h in hosts if h[0]]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:  # done when one host answered, all failed, or the time is up
        t.join(max(0.0, deadline - time.monotonic()))
        if ok.is_set():
            break
    return ok.is_set()
