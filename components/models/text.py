"""The default text side of the generator: a word-level tokenizer over the world's vocabulary,
saved as a real transformers tokenizer, and a tiny ``CLIPTextModel`` trained from scratch.

Prompts in the world are generated from templates, so their vocabulary is closed: every
category, size, action, relation and background phrase, the words of the templates, and the
reference indices. A word-level tokenizer over exactly that vocabulary makes one token per word
(no sub-word noise for a model this small); anything else maps to ``[UNK]``. The real profile
uses the FLUX pipeline's own tokenizers and encoders instead.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from .. import world
from ..world import backgrounds, shapes
from ..world.scenes import RELATIONS

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"\w+|[^\w\s]")  # what the Whitespace pre-tokenizer splits a prompt into
_SAMPLED_PROMPTS = 200  # prompts per task sampled to collect the templates' own words


def words(text: str) -> list[str]:
    """The words of ``text`` as the tokenizer splits it (lower-cased)."""
    return _WORD.findall(text.lower())


def world_vocabulary() -> list[str]:
    """Every word a world prompt can contain, sorted: the world's names and phrases plus the
    words of prompts sampled (fixed seed) from every task, single-subject and standardization."""
    vocab: set[str] = set()
    names = [*world.CATEGORIES, *world.SIZES, *shapes.ROTATIONS, *shapes.POSES, *RELATIONS,
             *backgrounds.PHRASES.values(), *(f"image {k}" for k in range(1, 5))]
    for name in names:
        vocab.update(words(name))
    rng = np.random.default_rng(0)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    for _ in range(_SAMPLED_PROMPTS):
        for task in world.TASKS:
            vocab.update(words(world.sample_task(rng, task, pool).prompt))
        vocab.update(words(world.sample_single(rng, pool).prompt))
        vocab.update(words(world.sample_standardize(rng, pool, 0.5).prompt))
    return sorted(vocab)


def build_tokenizer(vocab: list[str] | None = None, max_length: int = 32) -> PreTrainedTokenizerFast:
    """A word-level ``PreTrainedTokenizerFast`` over ``vocab`` (default: the world's), adding
    [BOS] ... [EOS], padding to ``max_length``. It saves and loads like any transformers
    tokenizer (``save_pretrained`` / ``AutoTokenizer.from_pretrained``)."""
    vocab = vocab if vocab is not None else world_vocabulary()
    ids = {tok: i for i, tok in enumerate([*SPECIALS, *vocab])}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=UNK))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                       special_tokens=[(BOS, ids[BOS]), (EOS, ids[EOS])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                   eos_token=EOS, model_max_length=max_length, do_lower_case=True)
    return fast


def tokenize(tokenizer, prompts: list[str]):
    """Token ids and attention mask (``(B, max_length)`` tensors) of lower-cased ``prompts``; a
    prompt longer than the tokenizer's ``model_max_length`` is cut, with a warning."""
    enc = tokenizer([p.lower() for p in prompts], padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt")
    if int(enc.attention_mask.sum(1).max()) == tokenizer.model_max_length:  # full: maybe cut
        room = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
        long = [p for p in prompts if len(tokenizer.tokenize(p.lower())) > room]
        if long:  # warned once per process (warnings' default filter), not at every training step
            warnings.warn(f"{len(long)} prompt(s) longer than the {tokenizer.model_max_length} tokens the text "
                          f"encoder reads were cut, e.g. {long[0]!r}", stacklevel=2)
    return enc


def tiny_text_encoder(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 2, seed: int = 0) -> CLIPTextModel:
    """A freshly initialised ``CLIPTextModel`` sized for the world, wired to ``tokenizer``'s
    special tokens (the pooled output reads the [EOS] position)."""
    import torch

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return CLIPTextModel(config)
