"""How an answer is cut into the sentences spoken while it is written (spoken_answers.py): each
ends as soon as its end arrives, whatever the deltas' boundaries, and a long run without one is
spoken in pieces cut at a space."""

from __future__ import annotations

import pytest

from services.orchestrator.spoken_answers import LONGEST_SENTENCE, SentenceCutter


def cut(deltas: list[str]) -> tuple[list[str], str]:
    cutter = SentenceCutter()
    sentences = [sentence for delta in deltas for sentence in cutter.feed(delta)]
    return sentences, cutter.rest()


@pytest.mark.parametrize(
    "deltas",
    [
        ["Hello there. How are you? Fine!"],
        ["Hel", "lo there", ". How", " are you?", " Fine", "!"],
        list("Hello there. How are you? Fine!"),
    ],
)
def test_a_sentence_ends_when_its_end_arrives_whatever_the_deltas(deltas: list[str]) -> None:
    assert cut(deltas) == (["Hello there.", "How are you?"], "Fine!")


def test_quotes_ellipses_and_line_breaks_end_sentences_and_numbers_do_not() -> None:
    sentences, rest = cut(['He said "stop." Then\u2026 nothing.\nA list:\n- 3.5 kg of flour'])
    assert sentences == ['He said "stop."', "Then\u2026", "nothing.", "A list:"]
    assert rest == "- 3.5 kg of flour"


def test_a_long_run_without_an_end_is_spoken_in_pieces_cut_at_a_space() -> None:
    words = "word " * 300
    sentences, rest = cut([words])
    assert sentences
    assert all(len(sentence) <= LONGEST_SENTENCE for sentence in sentences)
    assert " ".join([*sentences, rest]).split() == words.split()


def test_white_space_or_punctuation_alone_is_never_spoken() -> None:
    assert cut(["  \n\n  ", " . ", "?! ", "--"]) == ([], "")
