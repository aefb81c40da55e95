"""SerialGen's standardizer: the reference conditioning (FBDM / RPIM analogues) reads the mask
and pose from the analyser, never from the renderer; a standardizer folder round-trips; a
generator that carries one standardizes its references on every path that samples it, with the
same function SFT trains through; the stage trains and scores it on held-out identities."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from components import judges as judges_stage
from components import standardizer as standardizer_stage
from components.data.manifest import read_manifest
from components.judging.base import isolate, keep_in_place
from components.models import conditioning
from components.models.conditioning import POSE_DIMS, ReferenceAnalyser, ReferenceConditioner, pose_vector
from components.models.generator import SubjectGenerator, to_model, to_uint8
from components.models.sampling import SamplingSettings, prepare_references
from components.models.standardizer import (FOLDER, Routes, Standardizer, box_extent, is_person, place_like,
                                            plain_background, view_mask, warp_to_standard)
from components.pipeline.project import default_params
from components.standardize.analyser import load_pairs as load_standardize_pairs
from components.training.fit import load_pairs
from tests.conftest import TINY_JUDGES, TINY_TRAIN, set_training
from tests.test_pretrain import SMALL_GEN


def hand_drawn(seed: int = 0) -> np.ndarray:
    """A 32 px image the renderer never made: a PIL ellipse and bar on noise."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse((6 + seed, 8, 20 + seed, 26), fill=(200, 30, 30))
    d.rectangle((22, 4, 26, 28), fill=(20, 20, 220))
    return np.asarray(im)


def conditioned_generator(seed: int = 0, fbdm: bool = True, rpim: bool = True) -> SubjectGenerator:
    model = SubjectGenerator.tiny(**SMALL_GEN, seed=seed)
    torch.manual_seed(seed)
    conditioning.attach(model, ReferenceAnalyser(8), fbdm, rpim)
    with torch.no_grad():  # away from the zero initialisation, so the conditioning shows
        for p in model.ref_conditioner.parameters():
            p.normal_(0, 0.5)
    return model


def test_pose_vectors_keep_the_person_and_objects_apart():
    person = pose_vector((20.0, 20.0, 8.0, 8.0), 0.0)
    obj = pose_vector(None, 90.0)
    assert len(person) == len(obj) == POSE_DIMS
    assert person[-2:] == [0.0, 1.0] and obj[:8] == [0.0] * 8 and obj[-2:] == pytest.approx([1.0, 0.0])
    assert person[0] == pytest.approx(np.sin(np.radians(20))) and person[1] == pytest.approx(np.cos(np.radians(20)))


def test_a_fresh_conditioner_changes_nothing():
    tokens = torch.randn(2, 3, 64, 48)
    c = ReferenceConditioner(48)
    assert torch.equal(c(tokens, torch.rand(2, 3, 64), torch.randn(2, 3, POSE_DIMS)), tokens)


def test_fbdm_adds_the_foreground_and_background_embeddings_by_the_share():
    c = ReferenceConditioner(4, fbdm=True, rpim=False)
    with torch.no_grad():
        c.fg.copy_(torch.tensor([1.0, 0, 0, 0]))
        c.bg.copy_(torch.tensor([0, 1.0, 0, 0]))
    share = torch.tensor([[[1.0, 0.0, 0.25]]])
    out = c(torch.zeros(1, 1, 3, 4), share, torch.zeros(1, 1, POSE_DIMS))
    assert out[0, 0].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0.25, 0.75, 0, 0]]


def test_the_mask_and_pose_come_from_the_analyser_on_an_image_the_renderer_never_made():
    """ref_tokens has no way in for a ground-truth mask or pose: what conditions the reference
    is the analyser's reading of the image itself."""
    model = conditioned_generator()
    image = hand_drawn()
    space = model.encode_images([image])
    share, pose = model.ref_analyser.analyse(space, model.config.patch)
    plain = model.pack(space)[:, None]
    expected = model.ref_conditioner(plain, share[:, None], pose[:, None])
    got = model.ref_tokens([[image]])
    assert torch.allclose(got, expected) and not torch.allclose(got, plain)
    other = model.ref_tokens([[hand_drawn(3)]])  # another image: another reading
    assert not torch.allclose(other - model.pack(model.encode_images([hand_drawn(3)]))[:, None], got - plain)


@pytest.mark.parametrize("fbdm,rpim", [(True, False), (False, True), (False, False)])
def test_each_module_switches_off(fbdm, rpim):
    c = ReferenceConditioner(8, fbdm, rpim)
    assert hasattr(c, "fg") == fbdm and hasattr(c, "pose") == rpim


def test_a_conditioned_folder_round_trips(tmp_path):
    model = conditioned_generator(seed=1, rpim=False)
    model.save_pretrained(tmp_path / "s")
    back = SubjectGenerator.from_pretrained(tmp_path / "s")
    assert not back.ref_conditioner.rpim and back.ref_conditioner.fbdm
    refs = [[hand_drawn(1)], [hand_drawn(2)]]
    assert torch.equal(back.ref_tokens(refs), model.ref_tokens(refs))
    assert not any(p.requires_grad for p in back.ref_analyser.parameters())


@pytest.fixture(scope="module")
def std_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("std") / "standardizer"
    conditioned_generator(seed=2).save_pretrained(folder)
    SamplingSettings(steps=2, guidance=1.0).save(folder)
    return folder


def test_standardizing_is_per_image_whatever_the_batch(std_folder):
    a, b, c = hand_drawn(0), hand_drawn(1), hand_drawn(2)
    one = Standardizer.load(std_folder)
    alone = one([b])[0]
    mixed = Standardizer.load(std_folder)([a, b, c, b])
    assert np.array_equal(mixed[1], alone) and np.array_equal(mixed[3], alone)
    assert not np.array_equal(mixed[0], mixed[2])
    assert mixed[0].shape == (32, 32, 3) and mixed[0].dtype == np.uint8


def test_a_plain_generator_folder_is_no_standardizer(tmp_path):
    SubjectGenerator.tiny(**SMALL_GEN).save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="not a standardizer"):
        Standardizer.load(tmp_path / "g")
    assert SubjectGenerator.from_pretrained(tmp_path / "g").standardizer is None


def test_a_generator_carries_its_standardizer_and_samples_through_it(std_folder, tmp_path, monkeypatch):
    """The folder keeps the standardizer; SamplingSettings.sample (the benchmark's, the pyfunc
    model's and generate's way in) standardizes, then arranges: prepare_references, SFT's too."""
    from components.benchmark.generators import TrainedGenerator
    from components.models import pyfunc

    gen = SubjectGenerator.tiny(**SMALL_GEN, seed=4)
    gen.standardizer = Standardizer.load(std_folder)
    gen.save_pretrained(tmp_path / "g")
    SamplingSettings(steps=2, guidance=1.0, reference_layout="slots").save(tmp_path / "g")
    assert (tmp_path / "g" / FOLDER / "ref_conditioning.json").is_file()
    raw = [[hand_drawn(0), hand_drawn(1), hand_drawn(2)]]

    seen = []
    real = prepare_references

    def spy(refs, layout, standardizer=None):
        out = real(refs, layout, standardizer)
        seen.append((layout, standardizer is not None, out))
        return out

    monkeypatch.setattr("components.models.sampling.prepare_references", spy)
    bench = TrainedGenerator(tmp_path / "g").generate_batch(["a"], raw, height=32, width=32, seed=0)[0]
    served = pyfunc.load(tmp_path / "g")("the cat from image 1, the fish from image 2 and the star from image 3",
                                         raw[0], steps=2)
    assert [(layout, std) for layout, std, _ in seen] == [("slots", True), ("slots", True)]
    expected = real(raw, "slots", Standardizer.load(std_folder))
    for _, _, out in seen:
        assert all(np.array_equal(x, y) for x, y in zip(out[0], expected[0]))
    assert bench.shape == served.shape == (32, 32, 3)


def test_sft_trains_on_the_references_sampling_would_hand_it(std_folder, tmp_path, monkeypatch, judge_world):
    """run_fit with a standardizer: the rows' references become prepare_references(...) of them
    (arranged as the data has them), and the saved model carries the standardizer."""
    from components.config import Params
    from components.training import fit

    data = judge_world[0] / "multi"
    params = default_params()
    params["generator"].update(SMALL_GEN)
    set_training(params, "sft", **TINY_TRAIN)
    captured = {}
    real = fit.fit_generator

    def record(stage, model, pairs, *a, **k):
        captured["refs"], captured["std"], captured["checkpoints"] = pairs.refs, model.standardizer, a[3]
        return real(stage, model, pairs, *a, **k)

    monkeypatch.setattr(fit, "fit_generator", record)
    init = tmp_path / "init"
    SubjectGenerator.tiny(**SMALL_GEN).save_pretrained(init)
    fit.run_fit("sft", Params.model_validate(params), data, tmp_path / "out", tmp_path / "rep", tmp_path / "ck",
                init=init, reference_layout="slots", standardizer=std_folder)
    raw = fit.load_pairs(data).refs
    # a stored dataset's references stand as the model reads them: standardized, not packed again
    expected = prepare_references(raw, "as_given", Standardizer.load(std_folder))
    assert all(np.array_equal(a, b) for r, e in zip(captured["refs"], expected) for a, b in zip(r, e))
    assert captured["std"] is not None
    assert SubjectGenerator.from_pretrained(tmp_path / "out").standardizer is not None
    centre = captured["checkpoints"]  # the placement decides the result, so it keys the checkpoints
    fit.run_fit("sft", Params.model_validate(params), data, tmp_path / "out", tmp_path / "rep", tmp_path / "ck",
                init=init, reference_layout="slots", standardizer=std_folder, placement="keep")
    assert captured["std"].routes.placement == "keep" and captured["checkpoints"] != centre
    keep = captured["checkpoints"]
    fit.run_fit("sft", Params.model_validate(params), data, tmp_path / "out", tmp_path / "rep", tmp_path / "ck",
                init=init, reference_layout="slots", standardizer=std_folder, placement="keep", min_extent=0.4)
    assert captured["std"].routes.min_extent == 0.4 and captured["checkpoints"] not in (centre, keep)


def test_sft_standardizes_each_target_s_own_subject_unless_told_the_reference(std_folder, tmp_path, monkeypatch,
                                                                              judge_world):
    """sft.standardize_from: target hands run_fit the pairs with reference k replaced by subject k
    of the target, centred at multisubject.subject_size (the standardizer reads those); reference
    leaves the dataset's own references (run_fit loads them)."""
    from components.config import Params
    from components.training import sft

    data = judge_world[0] / "multi"
    params = default_params()
    params["multisubject"]["subject_size"] = 20
    seen = {}
    monkeypatch.setattr(sft, "run_fit", lambda *a, **k: seen.update(k) or {})
    paths = sft.SftPaths(data=data, single=judge_world[0] / "single", init=tmp_path, standardizer=std_folder,
                         out=tmp_path / "o", reports=tmp_path / "r", checkpoints=tmp_path / "c")
    sft.run_sft(Params.model_validate(params), paths, standardize=True)
    pairs, stored = seen["data"], load_pairs(data)
    assert seen["standardizer"] == std_folder and seen["extra"]["standardize_from"] == "target"
    assert [len(r) for r in pairs.refs] == [len(r) for r in stored.refs]
    assert np.array_equal(pairs.targets, stored.targets) and pairs.prompts == stored.prompts
    # not the dataset's own references: each is the target's subject k at its manifest box
    assert not any(np.array_equal(a, b) for r, s in zip(pairs.refs, stored.refs) for a, b in zip(r, s))
    manifest = read_manifest(data)
    assert all(np.array_equal(ref, isolate(t, tuple(int(v) for v in box), 20))
               for t, refs, boxes in zip(pairs.targets, pairs.refs, manifest.boxes) for ref, box in zip(refs, boxes))
    # each crop shows its own subject at its centre: the centre's colour is nearest subject k's
    # mean colour in the target among the row's subjects
    hits = total = 0
    for target, mask, refs in zip(pairs.targets, pairs.masks, pairs.refs):
        means = [target[mask == k + 1].astype(float).mean(0) for k in range(len(refs))]
        for k, ref in enumerate(refs):
            if (mask == k + 1).sum() < 4:
                continue
            centre = ref[14:18, 14:18].reshape(-1, 3).astype(float).mean(0)
            hits += int(np.argmin([np.abs(centre - m).sum() for m in means]) == k)
            total += 1
    assert total > 40 and hits / total > 0.8

    params["sft"]["standardize_from"] = "reference"
    seen.clear()
    sft.run_sft(Params.model_validate(params), paths, standardize=True)
    assert seen["data"] is None and seen["standardizer"] == std_folder
    seen.clear()
    sft.run_sft(Params.model_validate(params), paths)  # sft.standardize_refs is off by default
    assert seen["standardizer"] is None and seen["data"] is None


def test_references_rebuilt_from_targets_are_packed_where_the_data_packed_them(std_folder, tmp_path, judge_world,
                                                                            monkeypatch):
    """A multisubject dataset packs only its recomposed pairs' references into their slots; its
    other Three / Four pairs keep theirs where the reference shows the subject, and sft trains on
    them so. References rebuilt from the targets (standardize_from: target) are packed again once
    standardized exactly where the data packed them: run_fit hands the trainer the standardized
    views, packed for the recomposed rows and as they are for the rest."""
    import shutil

    from components.bootstrap import is_recomposed, recomposed_id
    from components.config import Params
    from components.data.manifest import MANIFEST
    from components.models import layout
    from components.training import fit, sft

    data = tmp_path / "multisubject"
    shutil.copytree(judge_world[0] / "multi", data)
    manifest = read_manifest(data)
    many = [i for i, r in enumerate(manifest.refs) if len(r) in layout.SLOTS]
    recomposed = set(many[::2])
    assert len(recomposed) >= 2 and len(many) > len(recomposed)
    manifest["id"] = [recomposed_id("Four", i) if i in recomposed else f"multisubject-{i:06d}"
                      for i in range(len(manifest))]
    manifest.to_parquet(data / MANIFEST, index=False)
    layout.save_layout(data, "slots")
    assert [is_recomposed(i) for i in manifest.id] == [i in recomposed for i in range(len(manifest))]
    pairs = sft.target_references(data, 20)
    assert pairs.layouts == ["slots" if i in recomposed else "as_given" for i in range(len(manifest))]

    params = default_params()
    params["generator"].update(SMALL_GEN)
    set_training(params, "sft", **TINY_TRAIN)
    captured = {}
    monkeypatch.setattr(fit, "fit_generator", lambda stage, model, p, *a, **k: captured.update(refs=p.refs) or {})
    init = tmp_path / "init"
    SubjectGenerator.tiny(**SMALL_GEN).save_pretrained(init)
    fit.run_fit("sft", Params.model_validate(params), data, tmp_path / "out", tmp_path / "rep", tmp_path / "ck",
                init=init, reference_layout="slots", standardizer=std_folder, placement="keep",
                data=sft.target_references(data, 20))
    views = Standardizer.load(std_folder).placed("keep").references(pairs.refs)
    assert len(captured["refs"]) == len(views)
    for i, (got, v) in enumerate(zip(captured["refs"], views)):
        want = layout.arrange(v, "slots") if i in recomposed else v
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    # packing moved something: a recomposed row's references are not its bare views
    assert any(not np.array_equal(captured["refs"][i][0], views[i][0]) for i in recomposed)

    # stored references (standardize_from: reference) are already packed: kept in place, they stay
    # so; a centred standard view undoes the packing, so those rows are packed again
    handed = {}
    monkeypatch.setattr(sft, "run_fit", lambda *a, **k: handed.update(k) or {})
    paths = sft.SftPaths(data=data, single=judge_world[0] / "single", init=init, standardizer=std_folder,
                         out=tmp_path / "o", reports=tmp_path / "r", checkpoints=tmp_path / "c")
    for placement, layouts in (("keep", None), ("centre", pairs.layouts)):
        params["sft"].update(standardize_from="reference", standardize_placement=placement)
        sft.run_sft(Params.model_validate(params), paths, standardize=True)
        got = handed["data"]
        assert (got if got is None else got.layouts) == layouts, placement


def test_the_stage_trains_the_standardizer_and_scores_it_on_heldout_identities(judge_world, tmp_path):
    data = judge_world[0]
    params = default_params()
    params["judges"].update(TINY_JUDGES)
    params["generator"].update(SMALL_GEN)
    set_training(params, "standardizer", **TINY_TRAIN)
    params["standardizer"].update(analyser_steps=6, eval_rows=6, grid_rows=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert judges_stage.main(["--params", str(tmp_path / "params.yaml"), "--data", str(data), "--out",
                              str(tmp_path / "judges"), "--reports", str(tmp_path / "rj"), "--metrics",
                              str(tmp_path / "mj.json")]) == 0
    out = tmp_path / "models" / "standardizer"
    assert standardizer_stage.main(["--params", str(tmp_path / "params.yaml"), "--data", str(data / "standardize"),
                                    "--judges", str(tmp_path / "judges"), "--out", str(out), "--reports",
                                    str(tmp_path / "reports"), "--checkpoints", str(tmp_path / "ck"),
                                    "--metrics", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["heldout"]["rows"] == 6 and 0 <= m["heldout"]["pixel_error"] <= 1
    assert {"mask_iou", "person_limb_error_deg"} <= set(m["analyser"]["heldout"]) or \
        {"mask_iou", "object_rotation_error_deg"} <= set(m["analyser"]["heldout"])
    for f in ("accuracy.csv", "accuracy.md", "heldout.csv", "heldout_grid.png", "analyser.json"):
        assert (tmp_path / "reports" / f).is_file(), f
    assert Standardizer.load(out)([hand_drawn()])[0].shape == (32, 32, 3)
    # the default: objects cut out, scaled as the training standard views' objects are
    pairs = load_standardize_pairs(data / "standardize", params["synthesize"]["resolution"],
                                   params["synthesize"]["supersample"])
    objects = np.array([c != "person" for c in pairs.categories])
    assert Routes.load(out) == Routes("cut", box_extent(pairs.target_masks[objects]))
    assert m["routes"] == {"objects": "cut", "object_extent": Routes.load(out).object_extent, "placement": "centre",
                           "min_extent": 0.0, "floor_resample": "bilinear"}
    assert 0 <= m["analyser"]["heldout_routed_right"] <= 1  # 6 rows of an analyser trained 6 steps: no bound


def test_the_logged_pyfunc_model_standardizes_through_the_same_function(std_folder, tmp_path, monkeypatch):
    """Logged to MLflow and loaded back by its model URI, the generator still carries its
    standardizer and samples through prepare_references."""
    import mlflow

    from components.models import pyfunc

    gen = SubjectGenerator.tiny(**SMALL_GEN, seed=6)
    gen.standardizer = Standardizer.load(std_folder)
    gen.save_pretrained(tmp_path / "g")
    SamplingSettings(steps=2, guidance=1.0).save(tmp_path / "g")
    calls = []
    real = prepare_references
    monkeypatch.setattr("components.models.sampling.prepare_references",
                        lambda refs, layout, std=None: calls.append(std is not None) or real(refs, layout, std))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        exp = mlflow.create_experiment("std", artifact_location=(tmp_path / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=exp)
        with mlflow.start_run():
            info = pyfunc.log_generator(tmp_path / "g", name="generator")
        calls.clear()  # logging ran the input example through it
        image = pyfunc.generate(info.model_uri, "the cat from image 1 in a city", [hand_drawn(5)], steps=2)
    finally:
        mlflow.set_tracking_uri(None)
    assert image.shape == (32, 32, 3) and calls == [True]
    local = pyfunc.generate(tmp_path / "g", "the cat from image 1 in a city", [hand_drawn(5)], steps=2)
    assert np.array_equal(image, local)


def test_is_person_reads_the_limbs_of_the_analyser_s_pose():
    poses = torch.tensor([pose_vector(pose, 0.0) for pose in ((20.0, 20.0, 8.0, 8.0), (145.0, 145.0, 8.0, 8.0))]
                         + [pose_vector(None, r) for r in (0.0, 35.0, 180.0)])
    assert is_person(poses).tolist() == [True, True, False, False, False]


def test_the_warp_undoes_a_shift_and_a_quarter_turn_exactly():
    """An upright subject centred at the standard size comes back as it is (on the background);
    shifted, or turned a quarter clockwise (the renderer's sense) and told so, it comes back the
    same; told the wrong way, it does not."""
    torch.manual_seed(0)
    canon = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 32, 32)
    mask[0, 10:22, 12:20] = 1.0  # 12 tall, 8 wide, its box centred
    bg = plain_background()
    expected = torch.where(mask[:, None] > 0, canon, bg[None, :, None, None])

    def warp(x, m, rot):
        out, found = warp_to_standard(x, m, torch.tensor([rot]), 12 / 32, bg)
        assert found.tolist() == [True]
        return out

    assert torch.allclose(warp(canon, mask, 0.0), expected, atol=1e-5)
    shifted = (torch.roll(canon, (5, -7), (2, 3)), torch.roll(mask, (5, -7), (1, 2)))
    assert torch.allclose(warp(*shifted, 0.0), expected, atol=1e-5)
    turned = (torch.rot90(canon, -1, (2, 3)), torch.rot90(mask, -1, (1, 2)))  # a quarter turn clockwise
    assert torch.allclose(warp(*turned, 90.0), expected, atol=1e-5)
    assert not torch.allclose(warp(*turned, -90.0), expected, atol=0.1)
    empty = warp_to_standard(canon, torch.zeros(1, 32, 32), torch.zeros(1), 0.5, bg)
    assert empty[1].tolist() == [False] and torch.equal(empty[0], canon)


def test_warping_by_the_true_mask_and_rotation_gives_the_standard_view():
    """The object route's geometry: with the renderer's own mask and rotation, warping small,
    off-centre, rotated objects on busy backgrounds lands close to their standard views; the
    rotation turned the other way, or not at all, lands further."""
    from components.config import Params
    from components.standardize.analyser import heldout_pairs

    synth = Params.model_validate(default_params()).synthesize
    h = heldout_pairs(24, 0.0, synth, seed=3)
    rotation = torch.rad2deg(torch.atan2(torch.tensor(h.poses[:, 8]), torch.tensor(h.poses[:, 9])))
    turned = (rotation.abs() > 20) & (rotation.abs() < 160)  # tilted: turned the other way they differ
    assert turned.sum() >= 4  # the test needs tilted sources

    def error(rot):
        out = to_uint8(warp_to_standard(to_model(h.sources), torch.tensor(h.source_masks).float(), rot,
                                        box_extent(h.target_masks), plain_background())[0])
        return np.abs(out.astype(np.float32) - h.targets).mean(axis=(1, 2, 3)) / 255

    right, raw = error(rotation), np.abs(h.sources.astype(np.float32) - h.targets).mean(axis=(1, 2, 3)) / 255
    assert right.mean() < 0.03 and raw.mean() > 0.2
    for wrong in (-rotation, torch.zeros_like(rotation)):
        assert error(wrong)[turned.numpy()].mean() > 1.3 * right[turned.numpy()].mean()


def test_objects_are_warped_by_the_analyser_s_reading_and_only_the_person_redrawn(std_folder, tmp_path, monkeypatch):
    """Routing and warping read the standardizer's analyser, never the renderer: the images the
    analyser takes for objects are warped by its own mask and rotation and never sampled; the
    person's goes through the generator; routes travel with the folder."""
    folder = tmp_path / "standardizer"
    SubjectGenerator.from_pretrained(std_folder).save_pretrained(folder)
    SamplingSettings(steps=2, guidance=1.0).save(folder)
    Routes("warp", 0.5).save(folder)
    std = Standardizer.load(folder)
    assert std.routes == Routes("warp", 0.5) and Routes.load(std_folder) == Routes()  # no file: all redrawn
    images = [hand_drawn(0), hand_drawn(1), hand_drawn(2), hand_drawn(4)]
    fg = torch.zeros(4, 32, 32)
    fg[:3, 8:24, 10:20] = 1.0  # the last: an object in which the analyser finds no subject
    pose = torch.tensor([pose_vector(None, 35.0), pose_vector((20.0, 20.0, 8.0, 8.0), 0.0), pose_vector(None, 180.0),
                         pose_vector(None, 0.0)])
    real_analyse = Standardizer.analyse
    read = []

    def analyse(self, ims):
        read.append(len(ims))
        real_analyse(self, ims)  # the analyser does run
        order = [next(i for i, im in enumerate(images) if np.array_equal(im, x)) for x in ims]
        return fg[order], pose[order]

    monkeypatch.setattr(Standardizer, "analyse", analyse)
    outs = []
    for batch in (128, 1):  # one batch, or one image per batch: the same views
        std = Standardizer.load(folder)
        std.batch = batch
        sampled = []
        real_sample = std.model.sample
        monkeypatch.setattr(std.model, "sample", lambda prompts, refs, **kw: sampled.extend(r[0] for r in refs) or
                            real_sample(prompts, refs, **kw))
        outs.append(std(images + images[:1]))  # a repeat is computed once
        assert [next(i for i, im in enumerate(images) if np.array_equal(im, x)) for x in sampled] == [1, 3]
    assert all(np.array_equal(a, b) for a, b in zip(*outs))
    out = outs[0]
    assert read and np.array_equal(out[4], out[0])
    bg = plain_background()
    for i, rot in ((0, 35.0), (2, 180.0)):
        expected = to_uint8(warp_to_standard(to_model([images[i]]), fg[i:i + 1], torch.tensor([rot]), 0.5, bg)[0])[0]
        assert np.array_equal(out[i], expected)
    assert std.route(images).tolist() == [False, True, False, False]
    gen = SubjectGenerator.tiny(**SMALL_GEN, seed=4)
    gen.standardizer = std
    gen.save_pretrained(tmp_path / "g")
    assert SubjectGenerator.from_pretrained(tmp_path / "g").standardizer.routes == Routes("warp", 0.5)


def test_the_warp_in_place_turns_a_subject_upright_where_it_stands():
    """placement keep: a subject turned a quarter clockwise anywhere in the frame comes back
    upright about its own centre, at its own size (the extent is not read)."""
    torch.manual_seed(1)
    canon = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 32, 32)
    mask[0, 10:22, 12:20] = 1.0  # its box centred: a quarter turn about the frame's centre is one about its own
    bg = plain_background()
    upright = torch.where(mask[:, None] > 0, canon, bg[None, :, None, None])
    turned, turned_mask = torch.rot90(canon, -1, (2, 3)), torch.rot90(mask, -1, (1, 2))
    for shift in ((0, 0), (-6, 7), (9, -5)):
        x, m = torch.roll(turned, shift, (2, 3)), torch.roll(turned_mask, shift, (1, 2))
        out, found = warp_to_standard(x, m, torch.tensor([90.0]), 0.9, bg, in_place=True)
        assert found.tolist() == [True]
        assert torch.allclose(out, torch.roll(upright, shift, (2, 3)), atol=1e-5)
    centred = warp_to_standard(x, m, torch.tensor([90.0]), 12 / 32, bg)[0]
    assert torch.allclose(centred, upright, atol=1e-5)  # the canonical view: centred, whatever the shift


def test_a_standard_view_is_placed_where_the_reference_showed_its_subject():
    """place_like: the view's subject goes to the reference subject's box centre, scaled to its
    area; what it uncovers is the plain background; no subject in either: left as it is."""
    bg = plain_background()
    view = bg[None, :, None, None].repeat(1, 1, 32, 32)
    view[0, :, 12:20, 12:20] = torch.tensor([0.8, -0.8, 0.0])[:, None, None]  # an 8 px square, centred
    ref = torch.zeros(1, 32, 32)
    ref[0, 2:18, 4:20] = 1.0  # 16 px, up and to the left
    out = place_like(view, view_mask(view, bg), ref, bg)
    got = view_mask(out, bg)[0] > 0
    # the reference's box, give or take the one-pixel edge bilinear upscaling blends
    assert got[3:17, 5:19].all() and not got[19:].any() and not got[:, 21:].any()
    assert not got[:1].any() and not got[:, :3].any()
    assert torch.allclose(out[0, :, 10, 12], torch.tensor([0.8, -0.8, 0.0]), atol=1e-5)
    assert torch.allclose(out[0, :, 28, 28], bg, atol=1e-6)
    assert torch.equal(place_like(view, view_mask(view, bg), torch.zeros(1, 32, 32), bg), view)


def test_placement_keep_places_both_routes_and_travels_with_the_model(std_folder, tmp_path, monkeypatch):
    """With placement keep an object is warped upright in place by the analyser's reading and the
    person's redraw is moved to where the analyser found the person; a generator records the
    placement its standardizer used."""
    folder = tmp_path / "standardizer"
    SubjectGenerator.from_pretrained(std_folder).save_pretrained(folder)
    SamplingSettings(steps=2, guidance=1.0).save(folder)
    Routes("warp", 0.5).save(folder)
    images = [hand_drawn(0), hand_drawn(1)]
    fg = torch.zeros(2, 32, 32)
    fg[0, 4:14, 18:28] = 1.0
    fg[1, 16:30, 2:12] = 1.0
    pose = torch.tensor([pose_vector(None, 35.0), pose_vector((20.0, 20.0, 8.0, 8.0), 0.0)])
    monkeypatch.setattr(Standardizer, "analyse", lambda self, ims: (
        fg[[next(i for i, im in enumerate(images) if np.array_equal(im, x)) for x in ims]],
        pose[[next(i for i, im in enumerate(images) if np.array_equal(im, x)) for x in ims]]))
    centre = Standardizer.load(folder)([images[1]])[0]  # the person's redraw, at the centre
    std = Standardizer.load(folder).placed("keep")
    assert std.routes == Routes("warp", 0.5, "keep")
    out = std(images)
    bg = plain_background()
    obj = to_uint8(warp_to_standard(to_model(images[:1]), fg[:1], torch.tensor([35.0]), 0.5, bg, in_place=True)[0])
    assert np.array_equal(out[0], obj[0])
    x = to_model([centre])
    assert np.array_equal(out[1], to_uint8(place_like(x, view_mask(x, bg), fg[1:], bg))[0])
    assert not np.array_equal(out[1], centre)
    gen = SubjectGenerator.tiny(**SMALL_GEN, seed=4)
    gen.standardizer = std
    gen.save_pretrained(tmp_path / "g")
    assert SubjectGenerator.from_pretrained(tmp_path / "g").standardizer.routes.placement == "keep"
    with pytest.raises(ValueError, match="placement"):
        Routes("warp", 0.5, "left")


def test_with_placement_keep_sft_hands_the_standardizer_what_the_redraw_read(std_folder, tmp_path, monkeypatch,
                                                                             judge_world):
    """standardize_placement keep: a reference the bootstrapping drew in place is read in place
    from the target (keep_in_place), a re-centred one isolated; run_fit is told the placement."""
    from components.config import Params
    from components.training import sft

    data = judge_world[0] / "multi"
    manifest = read_manifest(data)
    flags = [[(i + k) % 2 == 0 for k in range(len(b))] for i, b in enumerate(manifest.boxes)]
    manifest["ref_scenes"] = [[json.dumps({"in_place": f}) for f in row] for row in flags]
    monkeypatch.setattr(sft, "read_manifest", lambda _: manifest)
    params = default_params()
    params["multisubject"]["subject_size"] = 20
    params["sft"]["standardize_placement"] = "keep"
    seen = {}
    monkeypatch.setattr(sft, "run_fit", lambda *a, **k: seen.update(k) or {})
    paths = sft.SftPaths(data=data, single=judge_world[0] / "single", init=tmp_path, standardizer=std_folder,
                         out=tmp_path / "o", reports=tmp_path / "r", checkpoints=tmp_path / "c")
    sft.run_sft(Params.model_validate(params), paths, standardize=True)
    assert seen["placement"] == "keep"
    for t, refs, boxes, row in zip(seen["data"].targets, seen["data"].refs, manifest.boxes, flags):
        for ref, box, in_place in zip(refs, boxes, row):
            box = tuple(int(v) for v in box)
            assert np.array_equal(ref, keep_in_place(t, box) if in_place else isolate(t, box, 20))


def test_the_cut_route_cuts_objects_out_as_they_stand_whatever_rotation_the_analyser_reads(std_folder, tmp_path,
                                                                                            monkeypatch):
    """objects cut: the analyser's mask cuts the object out onto the plain background, centred and
    sized, or in place with keep; the rotation it reads is not applied (the warp route applies it),
    and no object is sampled; the route travels with a generator."""
    folder = tmp_path / "standardizer"
    SubjectGenerator.from_pretrained(std_folder).save_pretrained(folder)
    SamplingSettings(steps=2, guidance=1.0).save(folder)
    images = [hand_drawn(0), hand_drawn(2)]
    fg = torch.zeros(2, 32, 32)
    fg[0, 4:14, 18:28] = 1.0
    fg[1, 12:26, 6:16] = 1.0
    pose = torch.tensor([pose_vector(None, 35.0), pose_vector(None, 180.0)])
    monkeypatch.setattr(Standardizer, "analyse", lambda self, ims: (
        fg[[next(i for i, im in enumerate(images) if np.array_equal(im, x)) for x in ims]],
        pose[[next(i for i, im in enumerate(images) if np.array_equal(im, x)) for x in ims]]))
    bg, x = plain_background(), to_model(images)
    for placement in ("centre", "keep"):
        views = {}
        for route in ("cut", "warp"):
            Routes(route, 0.5, placement).save(folder)
            std = Standardizer.load(folder)
            monkeypatch.setattr(std.model, "sample", lambda *a, **k: pytest.fail("an object was sampled"))
            views[route] = std(images)
        keep = placement == "keep"
        upright = to_uint8(warp_to_standard(x, fg, torch.zeros(2), 0.5, bg, in_place=keep)[0])
        turned = to_uint8(warp_to_standard(x, fg, torch.tensor([35.0, 180.0]), 0.5, bg, in_place=keep)[0])
        for i in range(2):
            assert np.array_equal(views["cut"][i], upright[i]) and np.array_equal(views["warp"][i], turned[i])
            assert not np.array_equal(views["cut"][i], views["warp"][i])
    Routes("cut", 0.5, "keep").save(folder)
    gen = SubjectGenerator.tiny(**SMALL_GEN, seed=4)
    gen.standardizer = Standardizer.load(folder)
    gen.save_pretrained(tmp_path / "g")
    assert SubjectGenerator.from_pretrained(tmp_path / "g").standardizer.routes == Routes("cut", 0.5, "keep")
    with pytest.raises(ValueError, match="object_extent"):
        Routes("cut", 0.0)


def test_keep_enlarges_a_small_subject_to_min_extent_where_it_stands_and_keeps_it_whole():
    """min_extent: a subject whose box is under it is scaled up to it about its own centre, moved
    inwards only as far as the frame needs; a large enough one is left as keep leaves it; the
    person's placement does the same."""
    bg = plain_background()
    colour = torch.tensor([0.8, -0.8, 0.0])
    for route in ("object", "person"):
        for (y0, x0), inwards in (((14, 10), False), ((1, 26), True)):  # mid-frame; in the top right corner
            x = bg[None, :, None, None].repeat(1, 1, 32, 32)
            x[0, :, y0:y0 + 4, x0:x0 + 4] = colour[:, None, None]  # a 4 px square
            m = view_mask(x, bg)
            if route == "object":
                out = warp_to_standard(x, m, torch.zeros(1), 0.9, bg, in_place=True, min_extent=0.5)[0]
                plain = warp_to_standard(x, m, torch.zeros(1), 0.9, bg, in_place=True)[0]
            else:
                out, plain = place_like(x, m, m, bg, min_extent=0.5), place_like(x, m, m, bg)
            got = (out - bg[None, :, None, None]).abs().amax(1)[0] > 0.5 * float((colour - bg).abs().max())
            ys, xs = torch.nonzero(got, as_tuple=True)  # the pixels at least half the subject's colour
            assert all(14 <= int(v.max() - v.min()) + 1 <= 18 for v in (ys, xs))  # 16 px, give or take the blended edges
            cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
            if inwards:  # whole, against the top and right edges
                assert int(ys.min()) <= 1 and int(xs.max()) >= 30 and abs(float(cy) - 8) <= 1 and abs(float(cx) - 24) <= 1
            else:  # about its own centre
                assert abs(float(cy) - (y0 + 2)) <= 1 and abs(float(cx) - (x0 + 2)) <= 1
            assert torch.allclose(plain, x, atol=1e-5)  # without min_extent: as it stood
        big = bg[None, :, None, None].repeat(1, 1, 32, 32)
        big[0, :, 4:24, 6:26] = colour[:, None, None]  # 20 px: above min_extent, left as it is
        m = view_mask(big, bg)
        out = warp_to_standard(big, m, torch.zeros(1), 0.9, bg, in_place=True, min_extent=0.5)[0] \
            if route == "object" else place_like(big, m, m, bg, min_extent=0.5)
        assert torch.allclose(out, big, atol=1e-5)
    with pytest.raises(ValueError, match="min_extent"):
        Routes("cut", 0.5, "keep", 1.5)


def test_placing_a_standardizer_keeps_its_floor_unless_told_another(std_folder, tmp_path):
    """placed(placement) leaves the minimum size the folder records, and how it resamples (a folder
    that records none: bilinear, as it was trained); placed(placement, m) sets the floor, resampled
    nearest."""
    folder = tmp_path / "standardizer"
    SubjectGenerator.from_pretrained(std_folder).save_pretrained(folder)
    (folder / "standardizer.json").write_text(json.dumps({"objects": "cut", "object_extent": 0.5, "placement": "keep",
                                                          "min_extent": 0.36}))  # written before floor_resample
    assert Standardizer.load(folder).placed("centre").routes == Routes("cut", 0.5, "centre", 0.36, "bilinear")
    assert Standardizer.load(folder).placed("keep", 0.0).routes == Routes("cut", 0.5, "keep", 0.0, "nearest")
    Standardizer.load(folder).placed("keep", 0.36).routes.save(folder)
    assert Standardizer.load(folder).placed("keep").routes == Routes("cut", 0.5, "keep", 0.36, "nearest")
    with pytest.raises(ValueError, match="floor_resample"):
        Routes("cut", 0.5, "keep", 0.36, "bicubic")


def test_an_object_enlarged_by_the_floor_is_resampled_nearest_and_stays_crisp():
    """The floor's enlargement, nearest: the view holds only the subject's colours and the plain
    background; bilinear blends them at every edge (the blur the aesthetic judge marks down)."""
    bg = plain_background()
    x = bg[None, :, None, None].repeat(1, 1, 32, 32)
    x[0, :, 12:18, 10:16] = torch.tensor([0.8, -0.8, 0.0])[:, None, None]
    x[0, :, 12:18, 13:16] = torch.tensor([-0.6, 0.2, 0.9])[:, None, None]  # two colours, 6 px
    m = view_mask(x, bg)
    colours = {tuple(c) for c in x[0].reshape(3, -1).T.round(decimals=4).tolist()}
    for mode, crisp in (("nearest", True), ("bilinear", False)):
        out = warp_to_standard(x, m, torch.zeros(1), 0.9, bg, in_place=True, min_extent=0.5, floor_resample=mode)[0]
        got = {tuple(c) for c in out[0].reshape(3, -1).T.round(decimals=4).tolist()}
        assert (got <= colours) == crisp, mode
        assert int((view_mask(out, bg)[0] > 0).sum()) >= 14 * 14  # enlarged to 16 px either way
