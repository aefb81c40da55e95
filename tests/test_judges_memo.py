"""judging/memo.py: a loaded judge set grounds each (image, category) and embeds each crop once,
and answers exactly what the judge itself answers."""
from __future__ import annotations

import numpy as np
import torch

from components import world
from components.judging import Grounding
from components.judging.encoder import EncoderNet, WorldEncoder
from components.judging.grounding import GrounderNet, WorldGrounder
from components.judging.memo import MemoEncoder, MemoGrounder


class CountingGrounder:
    threshold = 0.5

    def __init__(self):
        self.calls: list[int] = []

    def ground(self, images, categories):
        self.calls.append(len(images))
        return [Grounding((0, 0, int(im[0, 0, 0]) + 1, 1), float(len(c))) for im, c in zip(images, categories)]


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_each_pair_is_grounded_once_in_order_and_the_memory_is_bounded():
    inner = CountingGrounder()
    memo = MemoGrounder(inner, capacity=3)
    a, b = _images(2)
    b[0, 0, 0] = (int(a[0, 0, 0]) + 1) % 256  # another box from the counting grounder
    first = memo.ground([a, a, b, a.copy()], ["cat", "robot", "cat", "cat"])  # a.copy(): same pixels, same key
    assert inner.calls == [3]  # (a, cat), (a, robot), (b, cat)
    assert first == inner.ground([a, a, b, a], ["cat", "robot", "cat", "cat"])
    assert first[0] != first[1] and first[0] != first[2] and first[3] == first[0]
    assert memo.ground([b, a], ["cat", "cat"]) == [first[2], first[0]] and len(inner.calls) == 2  # no new call
    assert memo.memory.hits == 3 and memo.memory.misses == 3
    memo.ground([a], ["dragon"])  # a fourth pair: the least recently used one, (a, robot), is forgotten
    assert len(memo.memory.entries) == 3
    memo.ground([a], ["robot"])
    assert inner.calls[-2:] == [1, 1] and memo.memory.misses == 5
    assert memo.threshold == 0.5  # the wrapped judge's attributes


def test_memo_judges_answer_what_the_judges_answer():
    """Real (untrained) world judges: a batch with repeats through the memory gives the judge's
    own boxes and, up to the last bits (CPU kernels round differently for another batch size: the
    judge alone does the same), its scores and embeddings, computing only the distinct inputs."""
    torch.manual_seed(0)
    grounder = WorldGrounder(GrounderNet(width=8), threshold=0.0)
    encoder = WorldEncoder(EncoderNet(32, 8, 16))
    imgs = _images(5, seed=1)
    batch = [imgs[i] for i in (0, 1, 2, 1, 0, 3, 4, 2)]
    cats = [world.CATEGORIES[i % 3] for i in (0, 1, 2, 1, 0, 3, 4, 2)]
    memo_g, memo_e = MemoGrounder(grounder), MemoEncoder(encoder)
    ours, theirs = memo_g.ground(batch, cats), grounder.ground(batch, cats)
    assert [g.box for g in ours] == [g.box for g in theirs]
    np.testing.assert_allclose([g.score for g in ours], [g.score for g in theirs], rtol=1e-5)
    assert memo_g.memory.misses == 5 and memo_g.memory.hits == 3
    np.testing.assert_allclose(memo_e.embed(batch), encoder.embed(batch), atol=1e-5)
    np.testing.assert_allclose(memo_e.embed(batch[::-1]), encoder.embed(batch[::-1]), atol=1e-5)  # from memory
    assert memo_e.memory.misses == 5 and memo_e.memory.hits == 11
    assert memo_e.patch_features(batch[:2]).shape[0] == 2
