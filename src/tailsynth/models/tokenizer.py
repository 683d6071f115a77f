"""A word-level tokenizer for a closed set of prompts, in the transformers format.

Built offline from the prompts themselves, so the embedded generator needs nothing from a hub.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
WORD = re.compile(r"\w+|[^\w\s]")


def prompt_length(prompt: str) -> int:
    """Tokens of ``prompt`` including [BOS] and [EOS]."""
    return len(WORD.findall(prompt)) + 2


def build_prompt_tokenizer(prompts: Iterable[str], max_length: int = 8) -> PreTrainedTokenizerFast:
    """Return a fast tokenizer whose vocabulary is every lower-cased word of ``prompts``.

    Each encoding is ``[BOS] words… [EOS]`` padded with ``[PAD]`` to ``max_length``.
    """
    words = sorted({w for p in prompts for w in WORD.findall(p.lower())})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    longest = max((prompt_length(p) for p in prompts), default=2)
    if longest > max_length:
        raise ValueError(f"a prompt needs {longest} tokens but max_length is {max_length}")
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]",
        special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
    )
