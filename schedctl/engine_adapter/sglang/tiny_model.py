"""A tiny random-weight Llama for running a real SGLang server on a CPU.

``schedctl sglang tiny-model DIR`` writes what ``--load-format dummy`` needs: a ``config.json`` for
``LlamaForCausalLM`` (SGLang draws random weights from it, nothing is downloaded) and an offline tokenizer in which
token ``i`` is the word ``w<i>``. A prompt of N ids is then exactly N tokens, and a workload's prefix sharing is
prefix sharing in the server's radix cache: schedctl's load generator sends the ids themselves (``input_ids``),
and the tokenizer only turns outputs back into text.

The tokenizer is built with Hugging Face's ``tokenizers`` library (a WordLevel model split on whitespace) and saved
as ``tokenizer.json`` + ``tokenizer_config.json`` (PreTrainedTokenizerFast), which ``AutoTokenizer`` loads offline.
``tokenizers`` comes with SGLang's environment; it is imported here only when the files are written.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 (words w0..w2 are not in the vocabulary)


class TinyLlama(BaseModel):
    """The shape of the model. Defaults: 2 layers, hidden 256 — a forward pass is milliseconds on one core."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: int = Field(2, ge=1, le=64)
    hidden: int = Field(256, ge=16, le=8192)
    intermediate: int = Field(512, ge=16, le=32768)
    heads: int = Field(4, ge=1, le=128)
    kv_heads: int = Field(2, ge=1, le=128)
    vocab: int = Field(32000, ge=16, le=1_000_000)
    max_context_tokens: int = Field(8192, ge=64, le=1_048_576)

    def head_dim(self) -> int:
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden ({self.hidden}) must divide by heads ({self.heads}), "
                             f"and heads by kv_heads ({self.kv_heads})")
        return self.hidden // self.heads

    def hf_config(self) -> dict[str, object]:
        """The Hugging Face ``config.json`` of a Llama of this shape."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim(),
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_context_tokens,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "bos_token_id": SPECIAL_TOKENS.index(BOS_TOKEN),
            "eos_token_id": SPECIAL_TOKENS.index(EOS_TOKEN),
        }


def word(token_id: int) -> str:
    """The word token ``token_id`` stands for."""
    return f"w{token_id}"


def write_tiny_model(directory: Path, shape: TinyLlama | None = None) -> Path:
    """Write config.json, tokenizer.json and tokenizer_config.json into ``directory``; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    shape = shape or TinyLlama()
    shape.head_dim()  # shape errors before anything is written
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({word(i): i for i in range(len(SPECIAL_TOKENS), shape.vocab)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK_TOKEN, "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
        "model_max_length": shape.max_context_tokens, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(shape.hf_config(), indent=2) + "\n")
    return directory
