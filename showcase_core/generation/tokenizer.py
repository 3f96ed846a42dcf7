"""The decoder's tokenizer: GPT-2's own from a local model directory, or a byte-level BPE trained on the corpus.

Either way a ``transformers.PreTrainedTokenizerFast`` whose ``<|endoftext|>`` token is BOS, EOS and padding (as
GPT-2's). A trained tokenizer travels inside the model's config.json as its ``tokenizer.json`` string, so a saved
model is the usual three files on local disk or S3.
"""

from __future__ import annotations

END = "<|endoftext|>"


def wrap_tokenizer(tokenizer_object):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token=END, eos_token=END, pad_token=END)


def train_tokenizer(texts, vocab_size: int = 2000):
    """Byte-level BPE (the ``tokenizers`` library, as GPT-2's) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return wrap_tokenizer(tok)


def tokenizer_json(tokenizer) -> str:
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return wrap_tokenizer(Tokenizer.from_str(text))


def load_pretrained_tokenizer(path: str):
    """GPT-2's tokenizer from a local model directory (real weights are configuration, never a download)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
