"""Shared fixtures: the default model's tokenizer and tiny random models built from it.

Unit tests use a tiny randomly initialised Llama with SmolLM2's real tokenizer, so they
exercise real tokenization (multi-byte characters, merged spaces) and run in seconds.
Tests marked ``slow`` use the real embedded default model.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def default_model():
    from conveyor_hf.models import load_default_model

    torch.set_num_threads(1)
    return load_default_model(device="cpu", verbose=False)


@pytest.fixture(scope="session")
def tokenizer(default_model):
    return default_model[1]


def make_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)
