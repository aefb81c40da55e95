"""The ``slots`` reference layout: a reference's subject lands in its slot, its box with it; one
or two references and ``as_given`` pass through; generator folders record the layout and every
way of sampling a trained generator (benchmark, pyfunc, local folder) packs by it."""
from __future__ import annotations

import numpy as np
import pytest

from components.benchmark.generators import TrainedGenerator
from components.models import layout, pyfunc
from components.models.generator import SubjectGenerator
from components.models.sampling import SamplingSettings
from components.world.render import SIZES
from tests.test_pretrain import SMALL_GEN

BG, FG = (40, 90, 200), (230, 30, 30)


def centred_reference(side=32, half=5):
    image = np.empty((side, side, 3), np.uint8)
    image[:] = BG
    c = side // 2
    image[c - half:c + half, c - half:c + half] = FG
    return image, [c - half, c - half, c + half, c + half]


def red_box(image):
    ys, xs = np.nonzero(np.all(np.abs(image.astype(int) - FG) < 60, axis=-1))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("n", sorted(layout.SLOTS))
def test_pack_moves_a_centred_subject_into_its_slot_and_its_box_with_it(n):
    image, box = centred_reference()
    for k, (cx, cy) in enumerate(layout.SLOTS[n]):
        packed = layout.pack(image, k, n)
        assert packed.shape == image.shape and packed.dtype == np.uint8
        x0, y0, x1, y1 = red_box(packed)
        assert abs((x0 + x1) / 2 - cx * 32) <= 1.5 and abs((y0 + y1) / 2 - cy * 32) <= 1.5
        assert abs((x1 - x0) - 10 * layout.SCALE[n]) <= 2  # shrunk by the slot's scale
        bx0, by0, bx1, by1 = layout.pack_box(box, k, n, 32)
        assert bx0 <= x0 + 1 and by0 <= y0 + 1 and x1 - 1 <= bx1 and y1 - 1 <= by1
        assert (bx1 - bx0) <= 10 * layout.SCALE[n] + 2
        # the rest of the frame continues the reference's surround
        assert np.all(packed[0, 0] == BG) and np.all(packed[-1, -1] == BG)


@pytest.mark.parametrize("n", sorted(layout.SLOTS))
def test_a_box_the_slot_cuts_off_is_still_a_box_inside_the_frame(n):
    """The slot's window reaches past the frame: a subject box in the corner that falls outside
    (a young grounder's box, say) once came back with its far side before its near one."""
    for k in range(n):
        for box in ([0, 0, 3, 1], [0, 0, 1, 1], [29, 30, 32, 32], [0, 0, 32, 32]):
            x0, y0, x1, y1 = layout.pack_box(box, k, n, 32)
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32, (k, box)


def test_slots_keep_the_worlds_subjects_apart_with_jitter():
    rng = np.random.default_rng(0)
    for n, size in ((3, SIZES["medium"]), (4, SIZES["small"])):
        for _ in range(200):
            pts = layout.slot_centres(n, rng)
            assert all(size / 2 <= v <= 1 - size / 2 for p in pts for v in p)
            assert min(np.hypot(a[0] - b[0], a[1] - b[1]) for i, a in enumerate(pts) for b in pts[:i]) >= size


def test_arrange_packs_three_or_four_references_only():
    image, _ = centred_reference()
    for n in (1, 2):
        assert all(r is image for r in layout.arrange([image] * n, "slots"))
    assert all(r is image for r in layout.arrange([image] * 4, "as_given"))
    packed = layout.arrange([image] * 4, "slots")
    assert [np.array_equal(p, layout.pack(image, k, 4)) for k, p in enumerate(packed)] == [True] * 4
    with pytest.raises(ValueError, match="unknown reference layout"):
        layout.arrange([image] * 3, "grid")


def test_a_folder_records_its_layout(tmp_path):
    assert layout.load_layout(tmp_path) == "as_given"
    layout.save_layout(tmp_path, "slots")
    assert layout.load_layout(tmp_path) == "slots"
    with pytest.raises(ValueError, match="unknown reference layout"):
        layout.save_layout(tmp_path, "grid")


def test_every_sampling_path_packs_by_the_folders_layout(tmp_path, monkeypatch):
    folder = tmp_path / "gen"
    SubjectGenerator.tiny(**SMALL_GEN, seed=0).save_pretrained(folder)
    SamplingSettings(steps=1, reference_layout="slots").save(folder)
    seen = []
    real = SubjectGenerator.sample

    def spy(self, prompts, refs, **kw):
        seen.append([r for row in refs for r in row])
        return real(self, prompts, refs, **kw)

    monkeypatch.setattr(SubjectGenerator, "sample", spy)
    image, _ = centred_reference()
    refs = [image] * 3
    prompt = "the cat from image 1, the moon from image 2 and the tree from image 3 in a forest"
    expected = [layout.pack(image, k, 3) for k in range(3)]
    gen = TrainedGenerator(folder)
    assert gen.sampling == SamplingSettings(1, 1.0, "slots")
    gen.generate(prompt, refs, height=32, width=32, seed=0)
    pyfunc.generate(str(folder), prompt, refs)
    assert len(seen) == 2 and all(all(np.array_equal(a, b) for a, b in zip(s, expected)) for s in seen)
    # two references pass through
    gen.generate("the cat from image 1 and the moon from image 2 in a forest", refs[:2], height=32, width=32, seed=0)
    assert all(np.array_equal(a, image) for a in seen[-1])
