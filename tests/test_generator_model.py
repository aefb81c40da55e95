"""The generator model: the world tokenizer, frame-wise position ids, token packing, condition
dropout, that a tiny generator overfits one batch, the samplers, and save/load by path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from components import world
from components.models.generator import (
    GeneratorConfig,
    SubjectGenerator,
    frame_ids,
    gaussian_log_prob,
    sde_step_moments,
    to_model,
    to_uint8,
)
from components.models.text import UNK, build_tokenizer, tokenize, world_vocabulary
from components.objectives import FlowMatching, FlowMatchingBatch

SMALL = {"width": 32, "double_blocks": 1, "single_blocks": 1, "heads": 2, "text_hidden": 16, "text_layers": 1}


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    samples = [world.sample_task(rng, "Position", pool) for _ in range(4)]
    targets = np.stack([world.render(s.target).image for s in samples])
    refs = [[world.render(r).image for r in s.refs] for s in samples]
    return targets, [s.prompt for s in samples], refs


def test_world_prompts_tokenize_without_unknown_words():
    tok = build_tokenizer()
    rng = np.random.default_rng(1)
    pool = world.identity_pool("bench", 0.1, "subjectflow-v1")
    prompts = [world.sample_task(rng, t, pool).prompt for t in world.TASKS for _ in range(5)]
    ids = tokenize(tok, prompts).input_ids
    assert tok.unk_token_id not in ids.tolist()[0] and not (ids == tok.unk_token_id).any()
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert tok.convert_ids_to_tokens(tokenize(tok, ["the dragon"]).input_ids[0][:4].tolist()) == \
        ["[BOS]", "the", UNK, "[EOS]"]
    assert "cat" in world_vocabulary() and "beach" in world_vocabulary()


def test_every_world_prompt_fits_the_text_encoder():
    """generator.text_tokens (32): no prompt of any task, single-subject or standardization pair
    is cut; a longer prompt is, with a warning, and keeps its [EOS] (what the pooled text reads)."""
    from components.config import GeneratorParams

    tok = build_tokenizer(max_length=GeneratorParams().text_tokens)
    rng = np.random.default_rng(2)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    prompts = [world.sample_task(rng, t, pool).prompt for t in world.TASKS for _ in range(300)]
    prompts += [world.sample_single(rng, pool).prompt for _ in range(300)]
    prompts += [world.sample_standardize(rng, pool, 0.5).prompt for _ in range(300)]
    ids = tokenize(tok, prompts).input_ids
    assert ((ids == tok.eos_token_id).sum(1) == 1).all()
    assert (ids[:, -1] == tok.pad_token_id).all()  # a free token left at the end: 29 of 32 used at most
    with pytest.warns(UserWarning, match="cut"):
        long = tokenize(tok, [" ".join(["cat"] * 40)]).input_ids
    assert long.shape[1] == 32 and long[0, -1] == tok.eos_token_id


def test_tokenizer_saves_as_a_real_transformers_tokenizer(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    p = ["a small cat from image 1 to the left of the robot from image 2, on a beach"]
    assert torch.equal(tokenize(back, p).input_ids, tokenize(tok, p).input_ids)


def test_frame_ids_are_what_the_design_says():
    ids = frame_ids(3, 2)
    assert ids.shape == (12, 3)
    # target frame 0 first, then reference 1, reference 2; each (frame, h, w) in raster order
    assert ids[:4].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert ids[4:8].tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]
    assert (ids[8:, 0] == 2).all() and torch.equal(ids[8:, 1:], ids[:4, 1:])


def test_pack_and_unpack_are_inverse_and_patches_are_local():
    g = SubjectGenerator.tiny(**SMALL)
    x = torch.randn(2, 3, 32, 32)
    tokens = g.pack(x)
    assert tokens.shape == (2, 64, 48)
    assert torch.equal(g.unpack(tokens), x)
    # token (h=1, w=2) holds exactly the pixels of patch rows 4..7, cols 8..11
    assert torch.equal(tokens[0, 1 * 8 + 2].reshape(3, 4, 4), x[0, :, 4:8, 8:12])
    img = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_model(img)), img)


def test_the_target_sees_its_references(batch):
    """Changing a reference changes the target's velocity: references are in the sequence."""
    targets, prompts, refs = batch
    g = SubjectGenerator.tiny(**SMALL).eval()
    x = g.pack(to_model(targets[:1]))
    t = torch.tensor([0.5])
    text = g.encode_text(prompts[:1])
    with torch.no_grad():
        a = g.velocity(x, t, text, g.ref_tokens(refs[:1]))
        b = g.velocity(x, t, text, g.ref_tokens([refs[1]]))
        none = g.velocity(x, t, text, g.ref_tokens([[]]))
    assert a.shape == x.shape and none.shape == x.shape
    assert not torch.allclose(a, b)


def test_condition_dropout_is_seeded_and_complete(batch):
    targets, prompts, refs = batch
    g = SubjectGenerator.tiny(**SMALL)
    fm, b = FlowMatching(0.2, 0.2, 0.2), FlowMatchingBatch(targets, prompts, refs)
    la, _ = fm(g, b, torch.Generator().manual_seed(3))
    lb, _ = fm(g, b, torch.Generator().manual_seed(3))
    assert torch.equal(la, lb)
    with pytest.raises(ValueError, match="same number of references"):
        g.ref_tokens([refs[0], refs[1][:1]])


def test_a_tiny_generator_overfits_one_batch(batch):
    targets, prompts, refs = batch
    g = SubjectGenerator.tiny(width=64, double_blocks=1, single_blocks=2, heads=2, text_hidden=32, text_layers=1)
    opt = torch.optim.AdamW(g.parameters(), lr=2e-3)
    losses = []
    for step in range(150):
        # the same noise and times every step: one batch, fixed, to be memorised
        loss, _ = FlowMatching()(g, FlowMatchingBatch(targets, prompts, refs), torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_sampling_shapes_determinism_and_sde_log_probs(batch):
    _, prompts, refs = batch
    g = SubjectGenerator.tiny(**SMALL).eval()
    a = g.sample(prompts[:2], refs[:2], steps=3, seed=5)
    b = g.sample(prompts[:2], refs[:2], steps=3, seed=5)
    assert a["images"].shape == (2, 32, 32, 3) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"])
    guided = g.sample(prompts[:2], refs[:2], steps=3, seed=5, guidance=3.0)
    assert guided["images"].shape == (2, 32, 32, 3)
    s = g.sample(prompts[:2], refs[:2], steps=3, seed=5, sde=True)
    assert s["log_probs"].shape == (2, 3) and s["latents"].shape == (2, 4, 64, 48)
    assert torch.isfinite(s["log_probs"]).all()
    # Recomputing a step's log-probability from the stored trajectory gives the same number:
    # what the RL stage does when it re-scores old samples under the current policy.
    ts = torch.linspace(1, 0, 4)
    x, x_next = s["latents"][:, 1], s["latents"][:, 2]
    with torch.no_grad():
        v = g.velocity(x, ts[1].expand(2), g.encode_text(prompts[:2]), g.ref_tokens(refs[:2]))
    mean, std = sde_step_moments(x, v, float(ts[1]), float(ts[2]), float(ts[1]), 0.7)
    assert torch.allclose(gaussian_log_prob(x_next, mean, std), s["log_probs"][:, 1], atol=1e-4)


def test_attention_processor_matches_diffusers_and_keeps_bf16_attention_in_fp32(batch):
    """models/attention.py: in fp32 it computes what diffusers' FluxAttnProcessor computes; under
    bf16 autocast on CPU the attention product runs in fp32 (the projections stay bf16), so the
    velocity is near the fp32 one."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    targets, prompts, refs = batch
    g = SubjectGenerator.tiny(**SMALL).eval()
    x = g.pack(g.to_space(targets))
    t, text, ref = torch.full((4,), 0.6), g.encode_text(prompts), g.ref_tokens(refs)
    with torch.no_grad():
        ours = g.velocity(x, t, text, ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours_bf16 = g.velocity(x, t, text, ref).float()
        g.transformer.set_attn_processor(FluxAttnProcessor())
        theirs = g.velocity(x, t, text, ref)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert ours_bf16.dtype == torch.float32 and not torch.equal(ours_bf16, ours)  # autocast did act
    assert (ours_bf16 - ours).abs().mean() < 0.05 * ours.abs().mean()

    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real(q, k, v, **kw)

    g = SubjectGenerator.tiny(**SMALL).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            g.velocity(x, t, text, ref)
        finally:
            torch.nn.functional.scaled_dot_product_attention = real
    assert seen and set(seen) == {torch.float32}


def test_complex_rope_is_diffusers_rope():
    """models/attention.py's RoPE (one complex product) gives diffusers' apply_rotary_emb to the
    bit in the forward and the same gradient up to rounding, on FLUX's own position embedding."""
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    from components.models.attention import rotary, rotation_of

    freqs = FluxPosEmbed(theta=10000, axes_dim=[8, 12, 12])(torch.randint(0, 8, (40, 3)).float())
    x = torch.randn(3, 40, 2, 32, requires_grad=True)
    theirs = apply_rotary_emb(x, freqs, sequence_dim=1)
    ours = rotary(x, rotation_of(freqs))
    assert torch.equal(ours, theirs)
    grad = torch.randn_like(ours)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)
    assert not torch.equal(rotary(x, rotation_of(freqs).roll(1, 0)), theirs)  # the positions are used


def test_bf16_sampling_draws_nearly_the_fp32_images(batch):
    """precision="bf16" changes the arithmetic, not the sampler: same seed, nearly the same images."""
    _, prompts, refs = batch
    g = SubjectGenerator.tiny(**SMALL).eval()
    kw = dict(steps=4, seed=3, guidance=2.0)
    fp32 = g.sample(prompts, refs, **kw)["images"].astype(float)
    bf16 = g.sample(prompts, refs, precision="bf16", **kw)["images"].astype(float)
    assert not np.array_equal(fp32, bf16)
    assert np.abs(fp32 - bf16).mean() < 2.0  # of 255
    with pytest.raises(ValueError, match="precision"):
        g.sample(prompts, refs, precision="fp8", **kw)


def test_save_and_load_by_path(batch, tmp_path):
    _, prompts, refs = batch
    g = SubjectGenerator.tiny(config=GeneratorConfig(max_refs=3), **SMALL).eval()
    g.save_pretrained(tmp_path / "gen")
    assert {p.name for p in (tmp_path / "gen").iterdir()} >= {"transformer", "text_encoder", "tokenizer",
                                                               "generator_config.json"}
    back = SubjectGenerator.from_pretrained(tmp_path / "gen").eval()
    assert back.config == g.config
    a, b = g.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Same weights; loaded tensors may take other BLAS paths (~1e-7), so images agree to 1-2 levels.
    diff = back.sample(prompts[:1], refs[:1], steps=2, seed=1)["images"].astype(int) - \
        g.sample(prompts[:1], refs[:1], steps=2, seed=1)["images"]
    assert np.abs(diff).max() <= 2


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         sample_size=32, mid_block_add_attention=False, scaling_factor=0.5, shift_factor=0.1)


def test_a_generator_over_an_autoencoder_works_in_its_latent_space(batch, tmp_path):
    """FLUX's layout: a frozen VAE; the transformer reads its latents (here 8x8x4 for 32 px,
    patch 1), the samplers decode back to pixels; the folder carries the VAE."""
    targets, prompts, refs = batch
    g = SubjectGenerator.tiny(GeneratorConfig(patch=1), vae=_tiny_vae(), **SMALL)
    assert (g.config.latent_channels, g.config.latent_factor, g.config.grid, g.config.channels) == (4, 4, 8, 4)
    z = g.encode_images(targets)
    assert z.shape == (4, 4, 8, 8) and g.pack(z).shape == (4, 64, 4)
    post = g.vae.encode(to_model(targets)).latent_dist.mean
    assert torch.allclose(z, (post - 0.1) * 0.5, atol=1e-6)  # the VAE's shift and scaling
    loss, _ = FlowMatching(subject_weight=3.0)(g, FlowMatchingBatch(targets, prompts, refs, np.ones((4, 32, 32), np.uint8)),
                                               torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in g.vae.parameters())  # frozen
    assert any(p.grad is not None for p in g.transformer.parameters())
    out = g.sample(prompts[:2], refs[:2], steps=2)["images"]
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    g.save_pretrained(tmp_path / "gen")
    back = SubjectGenerator.from_pretrained(tmp_path / "gen")
    assert back.vae is not None and (tmp_path / "gen" / "vae" / "config.json").is_file()
    assert np.array_equal(back.sample(prompts[:2], refs[:2], steps=2)["images"], out)
    with pytest.raises(ValueError, match="autoencoder is needed"):
        SubjectGenerator(g.transformer, g.text_encoder, g.tokenizer, g.config)  # latent config, no VAE
