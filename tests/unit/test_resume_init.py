"""A resumed model trained whole skips its random init (the checkpoint overwrites every weight): the same buffers
and parameters, and tied embeddings still tied (hpcrun.tasks.models.random_init)."""

import torch
from transformers import LlamaConfig

from hpcrun.tasks.models import random_init


def test_a_skipped_init_keeps_the_buffers_and_the_tied_embeddings():
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=100, tie_word_embeddings=True)
    plain, skipped = random_init(config, torch.float32), random_init(config, torch.float32, skip=True)
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    assert skipped.lm_head.weight is skipped.model.embed_tokens.weight
    a, b = dict(plain.named_buffers()), dict(skipped.named_buffers())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in skipped.named_parameters()]
