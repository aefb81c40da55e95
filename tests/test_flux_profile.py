"""The real profile's loading path (FLUX.1 Kontext + LoRA) on tiny random models saved locally in
diffusers' FLUX layout: the same code reads black-forest-labs/FLUX.1-Kontext-dev."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from components.models.flux import LORA_FILE, from_flux, trainable_parameters
from components.models.generator import SubjectGenerator
from components.models.text import build_tokenizer
from components.objectives import FlowMatching, FlowMatchingBatch


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """A FLUX.1 Kontext-shaped folder: 16-channel VAE (x8), 64-channel packed tokens, CLIP
    pooled + T5 per-token text, guidance embedding, all tiny and random."""
    d = tmp_path_factory.mktemp("flux-kontext-tiny")
    torch.manual_seed(0)
    tok = build_tokenizer()
    for sub in ("tokenizer", "tokenizer_2"):
        tok.save_pretrained(d / sub)
    CLIPTextModel(CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                                 projection_dim=16, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(d / "text_encoder")
    T5EncoderModel(T5Config(vocab_size=tok.vocab_size, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                            pad_token_id=tok.pad_token_id)).save_pretrained(d / "text_encoder_2")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=16, norm_num_groups=4,
                  scaling_factor=0.3611, shift_factor=0.1159, mid_block_add_attention=False).save_pretrained(d / "vae")
    FluxTransformer2DModel(patch_size=1, in_channels=64, out_channels=64, num_layers=1, num_single_layers=1,
                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                           pooled_projection_dim=16, guidance_embeds=True,
                           axes_dims_rope=(4, 6, 6)).save_pretrained(d / "transformer")
    return d


def test_flux_loads_by_path_with_only_lora_trainable(flux_dir, tmp_path):
    g = from_flux(flux_dir, resolution=32, lora_rank=4)
    c = g.config
    assert (c.latent_channels, c.latent_factor, c.patch, c.grid, c.channels) == (16, 8, 2, 2, 64)
    lora = trainable_parameters(g)
    assert 0 < lora < 0.5 * sum(p.numel() for p in g.transformer.parameters())
    assert all(("lora_" in n) == p.requires_grad for n, p in g.named_parameters())
    hidden, pooled = g.encode_text(["the cat from image 1 in a forest"])
    assert hidden.shape[-1] == 24 and pooled.shape[-1] == 16  # T5 per token, CLIP pooled
    img = np.zeros((2, 32, 32, 3), np.uint8)
    refs = [[img[0], img[0]], [img[1], img[1]]]
    loss, _ = FlowMatching()(g, FlowMatchingBatch(img, ["a", "b"], refs), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for n, p in g.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in g.named_parameters() if "lora_B" in n
               or "lora_A" in n)
    out = g.sample(["the cat from image 1 and the moon from image 2 in a forest"], refs[:1], steps=2)["images"]
    assert out.shape == (1, 32, 32, 3)
    # a trained folder names its base and carries only the adapter
    with torch.no_grad():
        for n, p in g.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)  # make the adapter matter
    g.save_pretrained(tmp_path / "gen")
    assert (tmp_path / "gen" / LORA_FILE).is_file() and not (tmp_path / "gen" / "transformer").exists()
    back = SubjectGenerator.from_pretrained(tmp_path / "gen")
    assert back.config.base == str(flux_dir)
    state, again = g.transformer.state_dict(), back.transformer.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert np.array_equal(back.sample(["x"], refs[:1], steps=2)["images"], g.sample(["x"], refs[:1], steps=2)["images"])


def test_params_select_the_real_profile(flux_dir):
    from components.config import GeneratorParams
    from components.training.fit import build_generator

    g = build_generator(GeneratorParams(pretrained=str(flux_dir), lora_rank=2), resolution=32, seed=0)
    assert g.config.base == str(flux_dir) and g.config.lora_rank == 2 and 0 < trainable_parameters(g)
    tiny = build_generator(GeneratorParams(), resolution=32, seed=0)
    assert tiny.config.base is None and tiny.vae is None and tiny.config.channels == 48


def test_params_naming_a_flux_folder_resolve_at_load(flux_dir, tmp_path):
    """generator.pretrained is checked against the layout from_flux reads, and the resolution
    against the model's packing (VAE x8, 2x2 latents per token: multiples of 16)."""
    import shutil

    import yaml

    from components.config import ParamsError, load_params
    from components.pipeline.project import default_params

    params = default_params()
    params["generator"]["pretrained"] = str(flux_dir)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").generator.pretrained == str(flux_dir)
    params["synthesize"]["resolution"] = 40  # fine for the tiny profile's patch 4, not for FLUX's 16
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"synthesize\.resolution 40 is not divisible by 16: .* x8 .* 2x2 latents"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "flux-without-t5"
    shutil.copytree(flux_dir, broken, ignore=shutil.ignore_patterns("text_encoder_2"))
    params["generator"]["pretrained"], params["synthesize"]["resolution"] = "flux-without-t5", 32  # relative
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"generator\.pretrained: 'flux-without-t5': .* no text_encoder_2/config\.json"):
        load_params(tmp_path / "params.yaml")
