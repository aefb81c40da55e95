"""Judges that never judge the same input twice in one process.

Scoring asks the same questions again and again: the PSR reward and the semantic reward both
ground every subject in the same output image; the benchmark grounds and embeds the same
reference images for every generator it scores; ``multisubject`` embeds a subject's crop in its
scene once per redraw of that subject. ``MemoGrounder`` and ``MemoEncoder`` wrap a grounder and
an encoder and answer a repeated input from memory, keyed by the input's bytes (and the
category), computing only the inputs they have not seen, in one batched call. The memory is
bounded (least recently used entries go first), so rollouts that never repeat an image cost a
hash per image and nothing else. ``load_judge_set`` wraps every loaded set.

Batched CPU kernels round differently for other batch sizes (in the last bits), so an answer from
memory can differ in those bits from what a batch without the repeat would have computed; the
benchmark therefore grounds and embeds its references in one fixed pass before it scores
(``rewards.remember_references``). The wrapped judge must not change while wrapped (its memory
would not know): set its attributes before wrapping.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from .base import Grounding


def image_key(image: np.ndarray, *extra: str) -> bytes:
    """A digest of an image's pixels, shape and dtype (and any ``extra`` strings)."""
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(a.data, digest_size=16)
    h.update(f"{a.shape}{a.dtype}{'|'.join(extra)}".encode())
    return h.digest()


class _Memory:
    """Least-recently-used answers by key; ``lookup`` computes the missing ones in one call."""

    def __init__(self, capacity: int):
        self.capacity, self.entries = capacity, OrderedDict()
        self.hits = self.misses = 0

    def lookup(self, keys: list[Hashable], compute: Callable[[list[int]], Sequence]) -> list:
        """The answer for every key; ``compute(indices)`` answers the first occurrence of each
        unseen key (indices into ``keys``), in that order."""
        first: dict[Hashable, int] = {}
        for i, k in enumerate(keys):
            if k not in self.entries and k not in first:
                first[k] = i
        fresh = dict(zip(first, compute(list(first.values())))) if first else {}
        self.misses += len(first)
        self.hits += len(keys) - len(first)
        out = []
        for k in keys:
            value = fresh[k] if k in fresh else self.entries[k]
            self.entries[k] = value
            self.entries.move_to_end(k)
            out.append(value)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return out


class _Wrapper:
    """A judge with a memory; every other attribute is the wrapped judge's."""

    def __init__(self, inner, capacity: int):
        self.inner, self.memory = inner, _Memory(capacity)

    def __getattr__(self, name):  # the wrapped judge's other attributes (not found on the wrapper)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class MemoGrounder(_Wrapper):
    """A ``Grounder`` answering each (image, category) pair once."""

    def __init__(self, grounder, capacity: int = 100_000):
        super().__init__(grounder, capacity)

    def ground(self, images: Sequence[np.ndarray], categories: Sequence[str]) -> list[Grounding]:
        if len(images) != len(categories):
            raise ValueError(f"{len(images)} images but {len(categories)} categories")
        keys = [image_key(im, c) for im, c in zip(images, categories)]
        return self.memory.lookup(keys, lambda idx: self.inner.ground([images[i] for i in idx],
                                                                      [categories[i] for i in idx]))


class MemoEncoder(_Wrapper):
    """A ``SubjectEncoder`` embedding each crop once (``patch_features`` is not remembered)."""

    def __init__(self, encoder, capacity: int = 50_000):
        super().__init__(encoder, capacity)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        rows = self.memory.lookup([image_key(c) for c in crops],
                                  lambda idx: [row.copy() for row in self.inner.embed([crops[i] for i in idx])])
        return np.stack(rows) if rows else self.inner.embed(crops)
