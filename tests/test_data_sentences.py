"""Our rule-based sentence splitter (``--split-sentences``): the documented rules, one case each."""
from __future__ import annotations

import pytest

from kotomamba.data.sentences import split_sentences

CASES = [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("Wait... What?! Yes.", ["Wait...", "What?!", "Yes."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Dr. Smith met J. R. R. Tolkien, e.g. at tea. Then home.",
     ["Dr. Smith met J. R. R. Tolkien, e.g. at tea.", "Then home."]),
    ("Pi is 3.14 today. version 2. it is lower. No. 5 left.", ["Pi is 3.14 today. version 2. it is lower.",
                                                              "No. 5 left."]),
    ("今日は晴れ。明日は雨！本当？「はい。」そうです", ["今日は晴れ。", "明日は雨！", "本当？", "「はい。」", "そうです"]),
    ("  leading and trailing.   ", ["leading and trailing."]),
    ("", []),
    ("   \n ", []),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_split_follows_the_documented_rules(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", [case[0] for case in CASES] + ["Line one.\nLine two.\n\nNew paragraph!\n"])
def test_keep_newlines_concatenates_back_to_the_document(text):
    pieces = split_sentences(text, keep_newlines=True)
    assert [p.strip() for p in pieces] == split_sentences(text)
    assert "".join(pieces) == (text if text.strip() else "")


def test_keep_newlines_keeps_the_whitespace_after_each_sentence():
    text = "Line one.\nLine two.\n\nNew paragraph!\n"
    assert split_sentences(text, keep_newlines=True) == ["Line one.\n", "Line two.\n\n", "New paragraph!\n"]
    assert split_sentences(text) == ["Line one.", "Line two.", "New paragraph!"]
