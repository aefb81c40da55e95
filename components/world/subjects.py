"""Subjects of the world: categories, identities (appearances) and the train/benchmark split.

A subject is a category (the word prompts use) plus an appearance; the appearance *is* the
identity. Identities are split by a salted hash of their id, so the split is a pure function of
(identity, fraction, salt) and benchmark identities can never leak into training by accident.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

from .palette import COLORS, HAIR_COLORS, SKIN_TONES, TROUSER_COLORS

OBJECT_CATEGORIES = ("star", "heart", "cat", "fish", "mushroom", "robot", "flower", "house", "moon", "tree")
CHARACTER = "person"
CATEGORIES = OBJECT_CATEGORIES + (CHARACTER,)

OBJECT_PATTERNS = ("solid", "stripes", "dots", "checker")
OBJECT_MARKS = ("none", "spot", "outline")
CHARACTER_PATTERNS = ("solid", "stripes")
CHARACTER_MARKS = ("none", "hat")


@dataclass(frozen=True)
class Identity:
    """One subject's identity.

    ``colors`` is (primary, secondary) for objects and (skin, hair, shirt, trousers) for the
    person; ``pattern`` decorates the primary colour (the shirt for a person); ``mark`` is an
    extra identifying detail.
    """

    category: str
    colors: tuple[str, ...]
    pattern: str
    mark: str

    @property
    def id(self) -> str:
        return "|".join((self.category, *self.colors, self.pattern, self.mark))

    @property
    def is_character(self) -> bool:
        return self.category == CHARACTER

    @classmethod
    def from_id(cls, identity_id: str) -> "Identity":
        parts = identity_id.split("|")
        return cls(parts[0], tuple(parts[1:-2]), parts[-2], parts[-1])


def all_identities(category: str) -> list[Identity]:
    """Every appearance the world can give a category, in a fixed order."""
    if category == CHARACTER:
        return [
            Identity(category, (skin, hair, shirt, trousers), pattern, mark)
            for skin, hair, shirt, trousers, pattern, mark in product(
                SKIN_TONES, HAIR_COLORS, COLORS, TROUSER_COLORS, CHARACTER_PATTERNS, CHARACTER_MARKS
            )
            if trousers != shirt
        ]
    if category not in OBJECT_CATEGORIES:
        raise KeyError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    return [
        Identity(category, (primary, secondary), pattern, mark)
        for primary, secondary, pattern, mark in product(COLORS, COLORS, OBJECT_PATTERNS, OBJECT_MARKS)
        if primary != secondary
    ]


def is_heldout(identity_id: str, fraction: float, salt: str) -> bool:
    """True if this identity belongs to the benchmark (never to training)."""
    h = zlib.crc32(f"{salt}:{identity_id}".encode()) / 2**32
    return h < fraction


@lru_cache(maxsize=16)
def identity_pool(pool: str, fraction: float, salt: str) -> dict[str, tuple[Identity, ...]]:
    """Identities per category for ``pool`` = "train" or "bench"."""
    if pool not in ("train", "bench"):
        raise ValueError(f"pool must be 'train' or 'bench', got {pool!r}")
    want_heldout = pool == "bench"
    return {
        cat: tuple(i for i in all_identities(cat) if is_heldout(i.id, fraction, salt) == want_heldout)
        for cat in CATEGORIES
    }
