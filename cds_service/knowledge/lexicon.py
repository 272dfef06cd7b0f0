"""Phrase matching that survives how people write test names: case, hyphens, spacing, plurals.

"Circulating-Tumor Cells", "circulating tumour cell" and "CIRCULATING TUMOR CELLS" all match the
phrase "circulating tumor cell"; "Guardant 360 CDx" matches "Guardant360 CDx". Pure functions over
strings, compiled once when the knowledge is loaded.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_/.,;:()\[\]®™]+")
# A token boundary also falls between letters and digits ("Guardant360" -> "guardant", "360").
_TOKENS = re.compile(r"[a-z]+|[0-9]+")


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces; accents, hyphens and punctuation dropped."""
    return _normalise_short(text) if len(text) <= _CACHED_LENGTH else _normalise(text)


def _normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(_TOKENS.findall(_SEPARATORS.sub(" ", folded)))


# Payer, plan and test names recur in every call; short ones are kept (at most ~1 MB in all, whatever
# callers send).
_CACHED_LENGTH = 256
_normalise_short = functools.lru_cache(maxsize=2048)(_normalise)


def tokens(text: str) -> list[str]:
    return normalise(text).split()


@dataclass(frozen=True)
class Phrases:
    """A set of phrases, each matched as whole tokens with optional separators between them and an
    optional plural 's' on the last one. ``find`` returns the longest phrase found, as written in
    the data (so the most specific test name wins: 'Guardant360 CDx' over 'Guardant360')."""

    pattern: re.Pattern[str] | None
    by_key: dict[str, str]

    @classmethod
    def of(cls, phrases: Iterable[str]) -> Phrases:
        by_key: dict[str, str] = {}
        for phrase in phrases:
            words = tokens(phrase)
            if words:
                by_key.setdefault(" ".join(words), phrase)
        if not by_key:
            return cls(None, {})
        alternatives = sorted(by_key, key=len, reverse=True)
        body = "|".join(r"\s?".join(map(re.escape, key.split())) + "s?" for key in alternatives)
        return cls(re.compile(r"(?<![a-z0-9])(?:" + body + r")(?![a-z0-9])"), by_key)

    def find(self, normalised_text: str) -> str | None:
        if self.pattern is None:
            return None
        best: str | None = None
        for match in self.pattern.finditer(normalised_text):
            key = self._key(match.group(0))
            if key is not None and (best is None or len(key) > len(best)):
                best = key
        return self.by_key[best] if best is not None else None

    def _key(self, matched: str) -> str | None:
        words = tokens(matched)
        candidates = (" ".join(words), " ".join(words)[:-1])  # with and without a plural 's'
        for candidate in candidates:
            if candidate in self.by_key:
                return candidate
        # "ctdna" written as "ct dna" (the optional separator): compare without spaces
        squeezed = matched.replace(" ", "")
        return next((k for k in self.by_key if k.replace(" ", "") in (squeezed, squeezed[:-1])), None)
