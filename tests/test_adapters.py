"""The pretrained-model adapters, on tiny random transformers models saved and loaded by path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from components.judging.adapters import (
    CLIP_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    HFImageEncoder,
    _pixel_box,
    load_encoder,
    load_grounder,
    preprocess,
)
from components.judging.base import Grounder, SubjectEncoder

VISION = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32)


def _clip_tokenizer(tmp):
    """A byte-level CLIP tokenizer with no merges: every character is a token. The special tokens
    come last as in CLIP's vocab, because OWL-ViT masks queries whose first id is 0."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt"), model_max_length=16), len(vocab)


def _clip_text(vocab_size):
    return dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=16, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every tiny model saved once: {name: path}."""
    import transformers as tf
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tok, vocab_size = _clip_tokenizer(root)
    paths = {name: root / name for name in ("vit", "clip", "clip_vision", "owlvit", "owlv2", "gdino")}

    tf.ViTModel(tf.ViTConfig(**VISION)).save_pretrained(paths["vit"])
    clip_cfg = tf.CLIPConfig(text_config=_clip_text(vocab_size), vision_config=VISION, projection_dim=12)
    tf.CLIPModel(clip_cfg).save_pretrained(paths["clip"])
    # Its own statistics and sizes, so the test sees they are read from the processor config.
    CLIPImageProcessorPil(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25], size={"shortest_edge": 36},
                          crop_size={"height": 32, "width": 32}).save_pretrained(paths["clip"])
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**VISION)).save_pretrained(paths["clip_vision"])

    owl_kw = dict(text_config=_clip_text(vocab_size), vision_config=VISION, projection_dim=16)  # = text width
    square = {"height": 32, "width": 32}
    tf.OwlViTForObjectDetection(tf.OwlViTConfig(**owl_kw)).save_pretrained(paths["owlvit"])
    tf.OwlViTProcessor(OwlViTImageProcessorPil(size=square, crop_size=square), tok).save_pretrained(paths["owlvit"])
    tf.Owlv2ForObjectDetection(tf.Owlv2Config(**owl_kw)).save_pretrained(paths["owlv2"])
    tf.Owlv2Processor(Owlv2ImageProcessorPil(size=square), tok).save_pretrained(paths["owlv2"])

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "photo", "of", "cat", "dog", "robot"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    bert_tok = tf.BertTokenizer.from_pretrained(root)
    swin = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2,
                         out_features=["stage1", "stage2"])
    bert = tf.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)
    # d_model 32: the input projections use GroupNorm(32); 2 decoder layers: 1 breaks weight tying.
    gd_cfg = tf.GroundingDinoConfig(
        backbone_config=swin, text_config=bert, num_queries=10, encoder_layers=1, decoder_layers=2, d_model=32,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        num_feature_levels=2, encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    tf.GroundingDinoForObjectDetection(gd_cfg).save_pretrained(paths["gdino"])
    tf.GroundingDinoProcessor(GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}),
                              bert_tok).save_pretrained(paths["gdino"])
    return {k: str(v) for k, v in paths.items()}


def _images(seed=0, shapes=((40, 60), (50, 30), (32, 32))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def _normalised(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return (np.asarray(rgb, np.float32) / 255 - np.asarray(mean)) / np.asarray(std)


def test_preprocess_resizes_crops_and_normalises():
    # A constant image stays constant: only the normalisation shows.
    flat = np.full((20, 30, 3), (200, 100, 50), np.uint8)
    x = preprocess([flat], resize=36, crop=32).numpy()
    assert x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x[0].reshape(3, -1).T, np.tile(_normalised((200, 100, 50)), (32 * 32, 1)), atol=1e-5)

    # Wide 40x80, black left half: shorter side 40 -> 36 so 80 -> 72, crop left = (72-32)/2 = 20,
    # top = (36-32)/2 = 2; the edge at x = 40 lands at 36 - 20 = 16 in the crop.
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 40:] = 255
    x = preprocess([wide], resize=36, crop=32).numpy()[0]
    np.testing.assert_allclose(x[:, :, :13].transpose(1, 2, 0), np.broadcast_to(_normalised((0, 0, 0)), (32, 13, 3)), atol=1e-5)
    np.testing.assert_allclose(x[:, :, 20:].transpose(1, 2, 0), np.broadcast_to(_normalised((255,) * 3), (32, 12, 3)), atol=1e-5)
    ref = np.asarray(Image.fromarray(wide).resize((72, 36), Image.BICUBIC))[2:34, 20:52]
    np.testing.assert_allclose(x.transpose(1, 2, 0), _normalised(ref), atol=1e-5)
    # The same image standing up: the crop is taken along the other axis.
    tall = preprocess([wide.transpose(1, 0, 2).copy()], resize=36, crop=32).numpy()[0]
    np.testing.assert_allclose(tall, x.transpose(0, 2, 1), atol=1e-5)

    with pytest.raises(ValueError):
        preprocess([flat], resize=16, crop=32)


@pytest.mark.parametrize("name,dim", [("vit", 16), ("clip", 12), ("clip_vision", 16)])
def test_encoder_embeds_and_patches(models, name, dim):
    enc = load_encoder(models[name], resize=None if name == "clip" else 36, crop=None if name == "clip" else 32)
    assert isinstance(enc, SubjectEncoder) and (enc.resize, enc.crop) == (36, 32)
    crops = _images()
    emb = enc.embed(crops)
    assert emb.shape == (3, dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(enc.embed(crops), emb)
    assert not np.allclose(emb[0], emb[1])
    patches = enc.patch_features(crops)
    assert patches.shape == (3, 16, 16) and patches.dtype == np.float32  # (32 / 8)^2 patches
    np.testing.assert_allclose(np.linalg.norm(patches, axis=-1), 1, atol=1e-5)
    expected_mean = {"vit": IMAGENET_MEAN, "clip": (0.5, 0.5, 0.5), "clip_vision": CLIP_MEAN}[name]
    np.testing.assert_allclose(enc.mean, expected_mean)


def test_vit_encoder_is_the_normalised_cls_token(models):
    from transformers import ViTModel

    enc = HFImageEncoder(models["vit"], kind="vit", resize=36, crop=32, batch_size=2)
    crops = _images(1)
    model = ViTModel.from_pretrained(models["vit"]).eval()
    with torch.no_grad():
        cls = model(pixel_values=preprocess(crops, 36, 32)).last_hidden_state[:, 0]
    np.testing.assert_allclose(enc.embed(crops), torch.nn.functional.normalize(cls, dim=-1).numpy(), atol=1e-5)


def test_encoder_default_psr_sizes_interpolate_positions(models):
    enc = load_encoder(models["vit"])  # 256 / 224 on a model trained at 32: positions are interpolated
    assert (enc.resize, enc.crop) == (256, 224)
    assert enc.patch_features(_images()[:1]).shape == (1, (224 // 8) ** 2, 16)


def test_encoder_rejects_unknown_models(models):
    with pytest.raises(ValueError):
        load_encoder(models["owlvit"])


@pytest.mark.parametrize("name", ["owlvit", "owlv2", "gdino"])
def test_grounder_boxes_and_threshold(models, name):
    images = _images(2)
    cats = ["cat", "dog", "a very long robot category name that will not fit"]
    grounder = load_grounder(models[name], threshold=0.0, batch_size=2)
    assert isinstance(grounder, Grounder)
    found = grounder.ground(images, cats)
    assert len(found) == 3
    for g, im in zip(found, images):
        assert g.found and 0.0 <= g.score <= 1.0
        x0, y0, x1, y1 = g.box
        assert all(isinstance(v, int) for v in g.box)
        assert 0 <= x0 < x1 <= im.shape[1] and 0 <= y0 < y1 <= im.shape[0]
    assert [g.box for g in grounder.ground(images, cats)] == [g.box for g in found]

    grounder.threshold = 1.01
    missed = grounder.ground(images, cats)
    assert [g.box for g in missed] == [None] * 3
    assert [g.score for g in missed] == pytest.approx([g.score for g in found])
    assert [g.candidate for g in missed] == [g.box for g in found]  # the top box, for graded rewards
    with pytest.raises(ValueError):
        grounder.ground(images, cats[:2])


def test_pixel_box_rounds_outwards_and_clips():
    assert _pixel_box(np.array([-5.0, 2.4, 30.2, 99.0]), 40, 50) == (0, 2, 31, 50)
    assert _pixel_box(np.array([45.0, 60.0, 48.0, 70.0]), 40, 50) == (39, 49, 40, 50)  # outside: one pixel
    assert _pixel_box(np.array([10.0, 10.0, 5.0, 4.0]), 40, 50) == (5, 4, 10, 10)  # swapped corners
