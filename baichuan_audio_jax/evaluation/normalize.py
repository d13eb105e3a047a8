"""The text normaliser applied to references and hypotheses before WER/CER/exact-match scoring.

Steps, in order (each can be turned off by the option of the same name):

1. ``unicode``: NFKC (full-width letters and digits become ASCII, compatibility forms unify);
2. ``simplified``: traditional Chinese characters become simplified ones (OpenCC ``t2s``);
3. ``lower``: lower case;
4. ``numbers``: in space-delimited languages, runs of digits become English number words
   (``"15"`` -> ``"fifteen"``; ``"2,024"`` -> ``"two thousand twenty four"``); Chinese numerals
   are left as written;
5. ``punctuation``: every Unicode punctuation character (categories ``P*``) and the symbols
   ``S*`` becomes a space (apostrophes inside words are kept: ``don't``);
6. whitespace is collapsed; for character-scored languages (:func:`is_character_language`) all
   spaces are removed, so CER counts characters only.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata

import opencc

# Languages scored by character error rate (no spaces between words).
CHARACTER_LANGUAGES = ("zh", "cmn", "yue", "wuu", "ja", "jp", "th", "lo", "my", "km")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"), (100, "hundred"))


def is_character_language(language: str | None) -> bool:
    """True for languages written without spaces between words (Chinese, Japanese, Thai, ...):
    ``zh``, ``zh-CN``, ``zh_tw``, ``ja``, ``yue`` ... (case-insensitive, region ignored)."""
    if not language:
        return False
    return re.split(r"[-_]", language.strip().lower())[0] in CHARACTER_LANGUAGES


def number_words(n: int) -> str:
    """English words of a non-negative integer: 0 -> "zero", 115 -> "one hundred fifteen"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


@functools.lru_cache(maxsize=1)
def _t2s():

    return opencc.OpenCC("t2s")


@dataclasses.dataclass(frozen=True)
class Normalizer:
    unicode: bool = True
    simplified: bool = True
    lower: bool = True
    numbers: bool = True
    punctuation: bool = True

    @classmethod
    def from_options(cls, options: dict | None) -> "Normalizer":
        """From a task's ``normalize`` option: ``true``/``false`` (all steps on/off) or an object
        naming steps (``{"numbers": false}``)."""
        if options is None or options is True:
            return cls()
        if options is False:
            return cls(False, False, False, False, False)
        if not isinstance(options, dict):
            raise ValueError(f"normalize: expected true, false or an object, got {options!r}")
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"normalize: unknown step(s) {sorted(unknown)}")
        return cls(**{k: bool(v) for k, v in options.items()})

    def __call__(self, text: str, language: str | None = None) -> str:
        chars = is_character_language(language)
        if self.unicode:
            text = unicodedata.normalize("NFKC", text)
        if self.simplified and re.search(r"[\u3400-\u9fff]", text):
            text = _t2s().convert(text)
        if self.lower:
            text = text.lower()
        if self.numbers and not chars:
            text = re.sub(r"\d+(?:,\d{3})*", lambda m: f" {number_words(int(m.group(0).replace(',', '')))} ", text)
        if self.punctuation:
            text = "".join(" " if _is_punctuation(c) else c for c in re.sub(r"(?<=\w)'(?=\w)", "\x00", text))
            text = text.replace("\x00", "'")
        text = " ".join(text.split())
        if chars:
            text = text.replace(" ", "")
        return text


def _is_punctuation(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS"


normalize = Normalizer()
