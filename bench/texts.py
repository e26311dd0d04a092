"""Deterministic benchmark texts: SHORT (~15 tokens) and LONG (~120 tokens) plausible English.

Generated from fixed word lists and sentence templates with a seeded ``random.Random``, so every run
on every machine embeds exactly the same strings (no dependence on ``PYTHONHASHSEED``, the network or
files on disk). Token counts are for the MiniLM WordPiece tokenizer, special tokens included.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

SEED = 20_240_611
DEFAULT_COUNT = 2000

_SUBJECTS = [
    "The engineering team", "Our support staff", "The city council", "A small bakery", "The research group",
    "The night shift", "The new manager", "A local farmer", "The school board", "The museum curator",
    "The delivery driver", "The marketing department", "A young violinist", "The hospital", "The ferry crew",
    "The library", "A retired teacher", "The football club", "The mayor", "The data platform team",
    "My neighbour", "The travel agency", "The orchestra", "The weather service", "The startup founder",
]
_VERBS = [
    "reviewed", "announced", "postponed", "finished", "repaired", "described", "celebrated", "questioned",
    "published", "rebuilt", "cancelled", "tested", "explained", "organised", "measured", "approved",
    "rejected", "shared", "improved", "planned", "discussed", "recorded", "replaced", "moved",
]
_OBJECTS = [
    "the quarterly budget", "a broken water pipe", "the annual summer festival", "the customer survey results",
    "a detailed safety report", "the old railway bridge", "the spring concert programme", "the billing system",
    "a new recycling scheme", "the harbour lights", "the winter timetable", "a proposal for bike lanes",
    "the search index", "the opening hours", "a shipment of fresh vegetables", "the exhibition catalogue",
    "the training schedule", "a list of missing books", "the roof of the town hall", "the release notes",
    "the evacuation plan", "a study on sleep and memory", "the hiring process", "the flood defences",
]
_ADVERBIALS = [
    "after a long meeting", "before the holiday weekend", "despite the heavy rain", "without much warning",
    "earlier this morning", "late on Friday evening", "during the power cut", "with help from volunteers",
    "for the third time this year", "ahead of the inspection", "at the request of residents",
    "in front of a small crowd", "under a tight deadline", "while the roads were closed", "at short notice",
    "to everyone's surprise", "as part of the merger", "once the snow had melted",
]
_OPENERS = [
    "According to the minutes,", "In the end,", "As expected,", "Meanwhile,", "On the other hand,",
    "For most people,", "Later that week,", "In a short statement,", "By the afternoon,", "At first,",
]
_CLAUSES = [
    "the results were better than anyone had predicted", "several residents asked for more information",
    "nobody could explain why the numbers had changed", "the costs turned out to be much higher",
    "the plan still needs approval from the regional office", "the work is expected to take two more weeks",
    "the staff were asked to keep a careful record of every change", "the decision was welcomed by local shops",
    "a second review will follow in the autumn", "the old equipment will be sold to a nearby school",
    "the queue at the entrance grew longer every hour", "the committee promised to publish the full report",
    "the first tests showed a clear improvement in speed", "some visitors complained about the noise",
    "the volunteers worked through the night to finish", "the forecast suggested the storm would pass quickly",
]


def _short_sentence(rng: random.Random) -> str:
    return (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ADVERBIALS)}.")


def _long_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_OPENERS)} {rng.choice(_CLAUSES)}."


def _long_text(rng: random.Random) -> str:
    # ~105 words: event sentences interleaved with commentary sentences, plus a two-clause closing one.
    parts: list[str] = []
    for _ in range(3):
        parts.append(_short_sentence(rng))
        parts.append(_long_sentence(rng))
    parts.append(_short_sentence(rng))
    parts.append(f"{rng.choice(_OPENERS)} {rng.choice(_CLAUSES)}, and {rng.choice(_CLAUSES)}.")
    return " ".join(parts)


def _unique(make: Callable[[], str], count: int) -> tuple[str, ...]:
    """``count`` distinct texts in generation order (a repeat is drawn again), bounded attempts."""
    seen: dict[str, None] = {}
    for _ in range(count * 20):
        if len(seen) >= count:
            break
        seen.setdefault(make(), None)
    return tuple(seen)


@lru_cache(maxsize=8)
def short_texts(count: int = DEFAULT_COUNT, seed: int = SEED) -> tuple[str, ...]:
    """``count`` one-sentence texts of about 15 tokens each."""
    rng = random.Random(seed)
    return _unique(lambda: _short_sentence(rng), count)


@lru_cache(maxsize=8)
def long_texts(count: int = DEFAULT_COUNT, seed: int = SEED + 1) -> tuple[str, ...]:
    """``count`` paragraph texts of about 120 tokens each."""
    rng = random.Random(seed)
    return _unique(lambda: _long_text(rng), count)


SETS = {"short": short_texts, "long": long_texts}


def text_set(name: str, count: int = DEFAULT_COUNT) -> list[str]:
    """The named set (``short`` or ``long``) as a fresh list."""
    try:
        return list(SETS[name](count))
    except KeyError:
        raise ValueError(f"unknown text set {name!r}; known: {', '.join(SETS)}") from None
