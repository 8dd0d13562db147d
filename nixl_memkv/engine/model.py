"""A small local Llama-architecture model for vLLM: config, random weights
and a word-level tokenizer written to a directory, so nothing is downloaded.

The weights are random but not uniform (unlike `--load-format dummy`, whose
logits are all equal): every token's logprob depends on the KV cache it was
computed from, so a wrong byte loaded from a cache changes the output."""

from __future__ import annotations

import dataclasses
import json
import os
import random

from .cpu_compat import stand_in_for_cuda_torchvision

# One word per token, so the tokenizer round-trips any id sequence.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int = 4096
    max_positions: int = 16384
    dtype: str = "float32"
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    def kv_bytes_per_token(self) -> int:
        """K and V for every layer, in the model's dtype."""
        item = {"bfloat16": 2, "float16": 2, "float32": 4}[self.dtype]
        return 2 * self.layers * self.kv_heads * self.head_dim * item


# `tiny` keeps tests fast; `bench` is sized so a 4k-token prefill takes
# seconds on a 2-core CPU, enough for a cache hit to show against recompute.
# float32: a cache hit computes the rest of the prompt with differently
# shaped kernels than a full prefill; in float32 that moves logprobs by
# ~1e-5, so outputs can be compared strictly (bfloat16 moves them ~1e-2).
PRESETS = {
    "tiny": ModelSpec("memkv-tiny-llama", hidden_size=256, layers=4, heads=4, kv_heads=4, intermediate_size=512),
    "bench": ModelSpec("memkv-bench-llama", hidden_size=1024, layers=8, heads=16, kv_heads=8,
                       intermediate_size=2816),
}


def vocabulary(spec: ModelSpec) -> list[str]:
    return SPECIAL_TOKENS + [f"w{i}" for i in range(spec.vocab_size - len(SPECIAL_TOKENS))]


def prompt_tokens(spec: ModelSpec, n_tokens: int, seed: int) -> list[int]:
    """A prompt of exactly n_tokens token ids (no special tokens), the same
    for the same seed. Sent as ids: vLLM bounds text prompts by characters
    before tokenizing, and ids make every length exact."""
    rng = random.Random(seed)
    return [rng.randrange(len(SPECIAL_TOKENS), spec.vocab_size) for _ in range(n_tokens)]


def _marker(spec: ModelSpec) -> dict:
    return {"memkv_model_spec": dataclasses.asdict(spec)}


def write_model(directory: str, spec: ModelSpec) -> str:
    """Writes the model to directory (once: an existing copy of the same spec
    is kept) and returns the directory."""
    marker_path = os.path.join(directory, "memkv_model.json")
    try:
        with open(marker_path) as f:
            if json.load(f) == _marker(spec):
                return directory
    except (OSError, ValueError):
        pass
    os.makedirs(directory, exist_ok=True)
    stand_in_for_cuda_torchvision()  # transformers imports torchvision
    _write_tokenizer(directory, spec)
    _write_weights(directory, spec)
    with open(marker_path, "w") as f:  # last: a half-written model has no marker
        json.dump(_marker(spec), f)
    return directory


def _write_tokenizer(directory: str, spec: ModelSpec) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(spec))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=spec.max_positions)
    fast.save_pretrained(directory)


def _write_weights(directory: str, spec: ModelSpec) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size, num_hidden_layers=spec.layers,
                         num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
                         max_position_embeddings=spec.max_positions, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False, torch_dtype=spec.dtype)
    torch.manual_seed(spec.seed)
    # A wider init than the default 0.02 spreads the logits: greedy choices
    # and logprobs then move visibly when any part of the KV cache is wrong.
    config.initializer_range = 0.05
    model = LlamaForCausalLM(config).to(getattr(torch, spec.dtype))
    model.save_pretrained(directory, safe_serialization=True)
