"""A word-level tokenizer fitted on a corpus: words and punctuation marks are tokens, every
non-empty line ends in `<eos>`, words outside a capped vocabulary map to `<unk>`.

Fitting is deterministic: the vocabulary is ordered by falling frequency, ties broken by the
token string, so the same text always gives the same ids.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from kdlab.errors import KdlabError

UNK = "<unk>"
EOS = "<eos>"
# A word (letters, digits, underscore) or one punctuation character. `<eos>` in the text
# itself is split into `<`, `eos`, `>`, so it can never collide with the special token.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """The token strings of `text`: words and punctuation, `<eos>` after each non-empty line."""
    out: list[str] = []
    for line in text.splitlines():
        toks = _TOKEN.findall(line.lower() if lowercase else line)
        if toks:
            out.extend(toks)
            out.append(EOS)
    return out


class WordTokenizer:
    def __init__(self, itos: Sequence[str], lowercase: bool = True):
        if list(itos[:2]) != [UNK, EOS]:
            raise ValueError("a vocabulary starts with <unk>, <eos>")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.lowercase = lowercase

    @classmethod
    def fit(cls, tokens: Iterable[str], max_vocab: int = 10000, min_freq: int = 1, lowercase: bool = True) -> "WordTokenizer":
        """Keep the `max_vocab - 2` most frequent tokens seen at least `min_freq` times."""
        if max_vocab < 3:
            raise KdlabError(f"max_vocab must be at least 3 (<unk>, <eos> and one word); got {max_vocab}")
        counts = Counter(t for t in tokens if t not in (UNK, EOS))
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([UNK, EOS, *ranked[: max_vocab - 2]], lowercase)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int:
        return 0

    def ids(self, tokens: Iterable[str]) -> list[int]:
        get = self.stoi.get
        return [get(t, 0) for t in tokens]

    def encode(self, text: str) -> list[int]:
        return self.ids(split_words(text, self.lowercase))

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens joined by spaces, `<eos>` as a line break; `split_words(decode(encode(s)))`
        equals `split_words(s)` when every token of `s` is in the vocabulary."""
        lines, cur = [], []
        for i in ids:
            w = self.itos[int(i)]
            if w == EOS:
                lines.append(" ".join(cur))
                cur = []
            else:
                cur.append(w)
        if cur:
            lines.append(" ".join(cur))
        return "\n".join(lines)
