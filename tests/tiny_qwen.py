"""A tiny random Qwen3-architecture causal LM with a Qwen3-style chat template, built on the spot (no download).

Its weights are random, so it writes garbage; what it proves is the plumbing: the chat template with
``enable_thinking``, left-padded batched ``generate``, decoding, and everything the generate stage wraps around it.
The tokenizer is character level (every character of the texts given, plus ASCII and Chinese punctuation), so any
Chinese chunk tokenizes without UNKs and prompts have realistic lengths.

Used by tests/test_llm_backends.py, tests/test_generate.py and scripts/bench_generate.py.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

# Qwen3's generation prompt: with enable_thinking=False the template writes an empty think block itself, so the model
# answers directly (the real Qwen3 template does the same; tools and multi-turn reasoning handling are left out).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3 keeps <think>/</think> as added but non-special tokens: they survive skip_special_tokens=True decoding.
THINK_TOKENS = ["<think>", "</think>"]
EXTRA_CHARS = (
    string.printable
    + "，。、；：？！“”‘’（）《》【】—…·「」『』０１２３４５６７８９一二三四五六七八九十问题什么哪些如何是否吗"
)


def build_tiny_qwen(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    extra_chars: str = EXTRA_CHARS,
) -> Path:
    """Write a tiny random Qwen3ForCausalLM and its tokenizer to ``out_dir`` and return the path.

    Args:
        out_dir: Directory to create (an existing model there is overwritten).
        texts: Texts whose characters join the vocabulary (e.g. the chunks the model will be prompted with).
        hidden_size: Model width (heads of 16 dims).
        num_layers: Number of decoder layers.
        seed: Seed of the random weights.
        extra_chars: Characters added to the vocabulary besides those of ``texts`` (leave out the question marks
            for a model that can never write a question).
    """
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(extra_chars).union(*map(set, texts)))
    vocab = {token: i for i, token in enumerate(["<unk>", *SPECIAL_TOKENS, *THINK_TOKENS])}
    for char in chars:
        vocab.setdefault(char, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.add_tokens(THINK_TOKENS, special_tokens=False)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    heads = max(1, hidden_size // 16)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id
    )
    model.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        json.dumps({"note": "tiny random Qwen3 for tests", "vocab": len(tokenizer)}) + "\n", encoding="utf-8"
    )
    return out_dir
