"""A GPT-2-like byte-level BPE tokenizer trained on the bundled corpus.

It behaves like GPT-2's tokenizer where saetools cares: byte-level BPE with GPT-2's
pre-tokenisation (so words carry their leading space, ``" Mary"``), ``<|endoftext|>`` as BOS,
EOS and padding, and a BOS prepended on encode so TransformerLens's ``to_tokens`` /
``to_str_tokens`` behave as they do for GPT-2.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKEN", "train_tokenizer", "load_tokenizer", "non_single_token_words"]

SPECIAL_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # GPT-2's pre-tokenisation, except that digits are split one by one (as LLaMA's tokenizer
    # does), so that any number is a sequence of single-digit tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(SPECIAL_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKEN} $A",
        pair=f"{SPECIAL_TOKEN} $A {SPECIAL_TOKEN} $B",
        special_tokens=[(SPECIAL_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        add_bos_token=True,
        model_max_length=1 << 30,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` from a local directory (no network)."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {path}: expected a directory written by "
            "tokenizer.save_pretrained(); reinstall saetools if this is the bundled model"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def non_single_token_words(tokenizer: PreTrainedTokenizerBase, words: Iterable[str]) -> list[str]:
    """Words that do not encode to exactly one token when preceded by a space."""
    words = list(words)
    encoded = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, ids in zip(words, encoded) if len(ids) != 1]
