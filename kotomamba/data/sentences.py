"""Deterministic, rule-based sentence splitting for ``kotomamba preprocess --split-sentences``.

Megatron-LM's ``tools/preprocess_data.py`` splits with NLTK's trained Punkt model, which needs
``nltk`` and its downloaded ``punkt`` data; neither is available offline here, so this is our own
splitter and **its sentences differ from Punkt's** in places (Punkt learns abbreviations and
collocations from data; these rules are fixed). The rules, applied left to right:

- A sentence ends after ``。``, ``！``, ``？``, ``!``, ``?``, ``…`` or ``.`` (runs such as ``?!``
  or ``...`` count as one end), together with any closing quotes and brackets right after it
  (``"'”’」』）)]}``).
- A full-width end (``。！？``) ends the sentence wherever it stands: Japanese and Chinese put no
  space between sentences.
- Any other end needs whitespace after it, and a single ``.`` (not ``...``) does not end a
  sentence after a single letter (``J. R. R. Tolkien``), after an abbreviation in ``ABBREVIATIONS`` (``Dr.``, ``e.g.``)
  or before a lower-case letter or a digit.

Whitespace between sentences: dropped (each sentence is stripped, as Punkt does), or with
``keep_newlines`` kept at the end of the sentence before it (Megatron's ``--keep-newlines``
variant of Punkt), so that the sentences concatenate back to the document exactly.
"""
from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf fig figs eq eqs no vol pp ed eds al approx dept "
    "est inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec u.s".split()
)
_CLOSERS = "\"'”’」』）)]}"
_END = re.compile(rf"(?:[。！？]+|[!?…]+|\.+)[{re.escape(_CLOSERS)}]*")
_WORD_BEFORE = re.compile(r"(\S+)$")


def split_sentences(text: str, keep_newlines: bool = False) -> list[str]:
    """The sentences of ``text`` in order; never an empty or all-whitespace one."""
    pieces, start = [], 0
    for match in _END.finditer(text):
        end = match.end()
        if not _ends_sentence(text, match.start(), end):
            continue
        after = end
        while after < len(text) and text[after].isspace():
            after += 1
        pieces.append(text[start:after] if keep_newlines else text[start:end])
        start = after
    pieces.append(text[start:])
    if keep_newlines:
        return [piece for piece in pieces if piece.strip()]
    return [piece.strip() for piece in pieces if piece.strip()]


def _ends_sentence(text: str, start: int, end: int) -> bool:
    if text[start] in "。！？":
        return True
    if end < len(text) and not text[end].isspace():
        return False
    if text[start] != "." or end - start > 1 and text[start + 1] == ".":
        return True
    word = _WORD_BEFORE.search(text, 0, start)
    word = word.group(1).lstrip(_CLOSERS + "([{「『（") if word else ""
    if len(word) == 1 and word.isalpha() or word.lower() in ABBREVIATIONS:
        return False
    following = text[end:].lstrip()[:1]
    return not (following.islower() or following.isdigit())
