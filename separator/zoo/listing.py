"""What `separator models list/show` reports about cards: one summary per card, filters, and the
sort by reported SDR. Plain data (dicts), so the CLI can print a table or JSON from it."""

from __future__ import annotations

from typing import Any

from separator.zoo.cards import Card, EnsembleCard, ModelCard


def reported_sdr(card: Card, stem: str | None = None) -> float | None:
    """The card's reported SDR (dB) for `stem`, else its `average`, else its best stem figure."""
    sdr = getattr(card, "sdr", None) or {}
    figures = {k: float(v) for k, v in sdr.items() if isinstance(v, (int, float))}
    if stem is not None:
        return figures.get(stem)
    if "average" in figures:
        return figures["average"]
    return max(figures.values(), default=None)


def card_stems(card: Card, cards: dict[str, Card]) -> list[str]:
    """The stems a card gives: a model's own, an ensemble's union, a chain's outputs."""
    if isinstance(card, ModelCard):
        return list(card.stems)
    if isinstance(card, EnsembleCard):  # every member stem (`stems:` only picks sources)
        members = [cards[m] for m in card.models if m in cards]
        return list(dict.fromkeys(s for m in members for s in getattr(m, "stems", ())))
    # a chain: the last step's stems, named by the path through the chain
    prefix = "-".join(stem for _, stem in card.steps[:-1])
    last = [cards.get(m.strip()) for m in card.steps[-1][0].split(",")]
    stems = dict.fromkeys(s for c in last if c is not None for s in card_stems(c, cards))
    return [f"{prefix}-{s}" for s in stems]


def card_kind(card: Card) -> str:
    if isinstance(card, ModelCard):
        return card.architecture
    return "ensemble" if isinstance(card, EnsembleCard) else "chain"


def summary(card: Card, cards: dict[str, Card], cached: bool | None) -> dict[str, Any]:
    """One card as plain data: name, kind, stems, reported SDR, weights and local state."""
    out: dict[str, Any] = {
        "name": card.name,
        "kind": "model" if isinstance(card, ModelCard) else card_kind(card),
        "architecture": card_kind(card),
        "stems": card_stems(card, cards),
        "sdr": {k: v for k, v in (getattr(card, "sdr", None) or {}).items()},
        "reported_sdr": reported_sdr(card),
        "license": card.license,
        "cached": cached,
    }
    if isinstance(card, ModelCard):
        out["urls"] = list(card.urls)
        out["sha256"] = card.weights.get("sha256")
        out["size"] = card.weights.get("size")
        out["file"] = card.weights.get("file")
    else:
        out["members"] = list(getattr(card, "models", ()))
    return out


def matches(
    card: Card,
    cards: dict[str, Card],
    *,
    arch: str | None = None,
    stem: str | None = None,
    search: str | None = None,
) -> bool:
    """Filters of `models list`: architecture (or ensemble/chain), a stem it gives, and a
    case-insensitive text found in its name, stems, source, notes or licence."""
    if arch is not None and card_kind(card) != arch:
        return False
    if stem is not None and stem not in card_stems(card, cards):
        return False
    if search is not None:
        text = " ".join(
            [card.name, *card_stems(card, cards), card.source, card.notes, card.license]
        )
        return search.lower() in text.lower()
    return True


def sort_by_sdr(names: list[str], cards: dict[str, Card], stem: str | None = None) -> list[str]:
    """Highest reported SDR first (for `stem` when given); cards without one last, by name."""

    def key(name: str) -> tuple[int, float, str]:
        value = reported_sdr(cards[name], stem)
        return (value is None, -(value or 0.0), name)

    return sorted(names, key=key)
