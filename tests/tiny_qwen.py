"""A tiny random Qwen3-architecture causal LM with a Qwen3-style chat template, built on the spot (no download).

Its weights are random, so it writes garbage; what it proves is the plumbing: the chat template with
``enable_thinking``, left-padded batched ``generate``, decoding, and everything the generate stage wraps around it.
The tokenizer is character level (every character of the texts given, plus ASCII and Chinese punctuation), so any
Chinese chunk tokenizes without UNKs and prompts have realistic lengths.

:func:`build_answering_qwen` builds a model that DOES answer: every attention and MLP output projection is zero, so
the hidden state at each position is that token's own embedding, and an untied LM head maps each character of a
question to the next one. Whatever the prompt, the answer after the chat template's closing ``\n`` is a valid
Chinese question, drawn through the engine's real sampler: some positions offer several equally likely characters,
so the question depends on the sampling seed (4^6 variants, enough for the duplicate filter over a statute's
chunks), and the same seed gives the same question. vLLM's CPU build runs it as it runs any Qwen3.

Used by tests/test_llm_backends.py, tests/test_generate.py, tests/test_vllm_real.py and scripts/bench_generate.py.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
    head_dim: int = 16,
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
        head_dim: Width of an attention head (vLLM's CPU attention runs 32 and up).
    """
    import torch
    from transformers import Qwen3ForCausalLM

    tokenizer = _write_tokenizer(out_dir, texts, extra_chars)
    torch.manual_seed(seed)
    config = _config(tokenizer, hidden_size, num_layers, tie_word_embeddings=True, head_dim=head_dim)
    model = Qwen3ForCausalLM(config).eval()
    _save(model, out_dir, tokenizer, "tiny random Qwen3 for tests")
    return Path(out_dir)


# The answering model's question, slot by slot: each slot is a tuple of options, every option's characters chain into
# each other and its last character leads to the first character of every option of the next slot with the same
# probability. No character appears twice (a token's successor depends on the token alone), and "\n" (the last
# character of the generation prompt) is the start.
ANSWER_SLOTS: tuple[tuple[str, ...], ...] = (
    ("依照本",),
    tuple("甲乙丙丁"),
    tuple("子丑寅卯"),
    tuple("东南西北"),
    tuple("春夏秋冬"),
    tuple("金木水火"),
    tuple("梅兰竹菊"),
    ("条的规定是什么？",),
)
ANSWER_LOGIT = 32.0  # the chosen characters' logit (every other token has 0): at temperature 0.7 nothing else is drawn


def answer_pattern(slots: Sequence[Sequence[str]] = ANSWER_SLOTS) -> str:
    """A regular expression that matches exactly the questions the answering model can write."""
    return "".join("(?:" + "|".join(slot) + ")" for slot in slots)


def build_answering_qwen(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    slots: Sequence[Sequence[str]] = ANSWER_SLOTS,
    extra_chars: str = EXTRA_CHARS,
) -> Path:
    """Write a tiny Qwen3ForCausalLM that answers every prompt with a question of :data:`ANSWER_SLOTS`.

    Every layer's ``o_proj`` and ``down_proj`` are zero, so each position's hidden state is its token's embedding;
    the embeddings of the question's characters (and of "\\n") are orthogonal unit vectors, and the untied LM head
    gives each one's successors :data:`ANSWER_LOGIT`. The last character leads to the EOS token (``<|im_end|>``).

    Args:
        out_dir: Directory to create.
        texts: Texts whose characters join the vocabulary (the chunks and the prompt template).
        hidden_size: Model width; at least the number of distinct characters in the question plus one.
        num_layers: Decoder layers (all of them pass the embedding through unchanged).
        slots: The question's slots (see :data:`ANSWER_SLOTS`).
        extra_chars: Characters added to the vocabulary besides those of ``texts``.
    """
    import torch
    from transformers import Qwen3ForCausalLM

    chain = ["\n", *(char for slot in slots for option in slot for char in option)]
    if len(set(chain)) != len(chain):
        raise ValueError("a character appears twice in the answer slots: its successor would be ambiguous")
    if len(chain) > hidden_size:
        raise ValueError(f"hidden_size {hidden_size} is too small for {len(chain)} answer states")
    tokenizer = _write_tokenizer(out_dir, texts, extra_chars + "".join(chain))
    # Heads of 32 dims: the smallest vLLM's CPU attention runs (vllm 0.32 v1/attention/backends/cpu_attn.py:69-70).
    config = _config(tokenizer, hidden_size, num_layers, tie_word_embeddings=False, head_dim=32)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    ids = {char: tokenizer.convert_tokens_to_ids(char) for char in chain}
    state = {char: number for number, char in enumerate(chain)}  # the dimension each character's embedding holds
    # Successors: "\n" → the first slot's options, an option's characters in order, its last character → the next
    # slot's options (or EOS after the last slot).
    successors: dict[str, list[int]] = {}
    previous = ["\n"]
    for slot in [*slots, None]:
        starts = [ids[option[0]] for option in slot] if slot else [config.eos_token_id]
        for char in previous:
            successors[char] = starts
        if slot:
            for option in slot:
                for char, following in itertools.pairwise(option):
                    successors[char] = [ids[following]]
            previous = [option[-1] for option in slot]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = model.model.embed_tokens.weight
        for char, token in ids.items():
            embeddings[token].zero_()
            embeddings[token, state[char]] = 1.0
        head = model.lm_head.weight
        head.zero_()
        # After the final RMSNorm a unit vector along one axis is sqrt(hidden_size) along it.
        scale = ANSWER_LOGIT / hidden_size**0.5
        for char, following in successors.items():
            for token in following:
                head[token, state[char]] = scale
    _save(model, out_dir, tokenizer, "tiny Qwen3 that answers every prompt with a question, for tests")
    return Path(out_dir)


def _write_tokenizer(out_dir: str | Path, texts: Iterable[str], extra_chars: str) -> Any:
    """A character-level Qwen3-style tokenizer over ``texts`` and ``extra_chars``, saved to ``out_dir``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

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
    return tokenizer


def _config(
    tokenizer: Any, hidden_size: int, num_layers: int, *, tie_word_embeddings: bool, head_dim: int = 16
) -> Any:
    from transformers import Qwen3Config

    heads = max(1, hidden_size // head_dim)
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def _save(model: Any, out_dir: str | Path, tokenizer: Any, note: str) -> None:
    from transformers import GenerationConfig

    config = model.config
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id
    )
    model.save_pretrained(out_dir)
    (Path(out_dir) / "README.md").write_text(
        json.dumps({"note": note, "vocab": len(tokenizer)}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
