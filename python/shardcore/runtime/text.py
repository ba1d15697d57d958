"""Text in and out: the checkpoint's tokenizer.json through Hugging Face's ``tokenizers``.

``tokenizers`` is an optional dependency (``pip install 'shardcore[text]'``); only requests
given as text need it, token ids never do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Encode text to token ids and decode ids to text with a tokenizer.json."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @classmethod
    def from_checkpoint(cls, checkpoint_dir) -> TextTokenizer:
        """The tokenizer of ``checkpoint_dir`` (its tokenizer.json)."""
        path = os.path.join(os.fspath(checkpoint_dir), TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{os.fspath(checkpoint_dir)!r} has no {TOKENIZER_FILE}: give the prompts as "
                "token ids"
            )
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError(
                "text prompts need Hugging Face tokenizers (pip install 'shardcore[text]')"
            ) from exc
        return cls(Tokenizer.from_file(path))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (no special tokens added)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (special tokens skipped)."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))
