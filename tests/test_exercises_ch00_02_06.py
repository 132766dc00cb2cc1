"""The checked exercises of chapters 0, 1, 2 and 6 accept right answers and reject the typical
wrong ones with the message that explains them."""

import pytest

from sdlearn.exercises import ch01_tokenizer as ch01
from sdlearn.tokenizer import END_TOKEN, START_TOKEN


def run(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def assert_rejects(capsys, check, answer, *phrases):
    ok, out = run(capsys, check, answer)
    assert ok is False and out.startswith("Not yet: "), out
    assert "Hint: " in out, out
    for phrase in phrases:
        assert phrase in out, f"{phrase!r} not in {out!r}"


def assert_accepts(capsys, check, answer):
    ok, out = run(capsys, check, answer)
    assert ok is True and out == "Correct!\n", out


# ---- Chapter 1: the tokenizer -------------------------------------------------------------
def test_ch01_pieces(capsys):
    assert_accepts(capsys, ch01.check_pieces, ["a", "cat", "'s", "2", "toys", "!!"])
    assert_accepts(capsys, ch01.check_pieces, ("a", "cat", "'s", "2", "toys", "!!"))
    assert_rejects(capsys, ch01.check_pieces, None, "no answer yet")
    assert_rejects(capsys, ch01.check_pieces, "a cat's", "list of strings")
    assert_rejects(capsys, ch01.check_pieces, ["A", "cat", "'s", "2", "toys", "!!"], "capital")
    assert_rejects(capsys, ch01.check_pieces, ["a", "cat's", "2", "toys", "!!"], "two pieces")
    assert_rejects(capsys, ch01.check_pieces, ["a", "cat", "'", "s", "2", "toys", "!!"],
                   "\"'s\"")
    assert_rejects(capsys, ch01.check_pieces, ["a", "cat", "'s", "2", "toys", "!", "!"],
                   "run of punctuation")
    assert_rejects(capsys, ch01.check_pieces, ["a", "cat", "'s", "2", "toys!!"],
                   "letters and punctuation")
    assert_rejects(capsys, ch01.check_pieces, ["a ", "cat", "'s", "2", "toys", "!!"], "space")
    assert_rejects(capsys, ch01.check_pieces, ["a", "cat", "'s", "toys", "!!"], "5 pieces")


def test_ch01_empty_prompt(capsys):
    assert_accepts(capsys, ch01.check_empty_prompt, [START_TOKEN] + [END_TOKEN] * 76)
    assert_rejects(capsys, ch01.check_empty_prompt, None, "no answer yet")
    assert_rejects(capsys, ch01.check_empty_prompt, [START_TOKEN, END_TOKEN], "you have 2 ids")
    assert_rejects(capsys, ch01.check_empty_prompt, [END_TOKEN] * 77, "start token")
    assert_rejects(capsys, ch01.check_empty_prompt, [START_TOKEN, END_TOKEN] + [0] * 75,
                   "not with 0")
    assert_rejects(capsys, ch01.check_empty_prompt, [START_TOKEN] * 2 + [END_TOKEN] * 75,
                   "position 1")


def merge_right(word, pair):
    merged, i = [], 0
    while i < len(word):
        if tuple(word[i:i + 2]) == pair:
            merged, i = merged + [word[i] + word[i + 1]], i + 2
        else:
            merged, i = merged + [word[i]], i + 1
    return merged


def merge_right_to_left(word, pair):  # merges overlapping pairs from the wrong end
    return merge_right(word[::-1], pair[::-1])[::-1] if pair[0] == pair[1] else \
        merge_right(word, pair)


def merge_ignoring_end_of_word(word, pair):  # compares symbols with their </w> removed
    merged, i = [], 0
    while i < len(word):
        if tuple(s.replace("</w>", "") for s in word[i:i + 2]) == pair:
            merged, i = merged + [word[i] + word[i + 1]], i + 2
        else:
            merged, i = merged + [word[i]], i + 1
    return merged


def test_ch01_merge(capsys):
    assert_accepts(capsys, ch01.check_merge, merge_right)
    assert_rejects(capsys, ch01.check_merge, None, "no answer yet")
    assert_rejects(capsys, ch01.check_merge, merge_right(["a", "b"], ("a", "b")),
                   "expected a function")
    assert_rejects(capsys, ch01.check_merge, lambda word, pair: None, "returned None")
    assert_rejects(capsys, ch01.check_merge, lambda word, pair: word[5], "raised IndexError")
    assert_rejects(capsys, ch01.check_merge, merge_right_to_left, "left to right")
    assert_rejects(capsys, ch01.check_merge, merge_ignoring_end_of_word, "'t</w>' is not 't'")
    assert_rejects(capsys, ch01.check_merge, lambda word, pair: word, "gave")


def test_ch01_max_repeats(capsys):
    assert_accepts(capsys, ch01.check_max_repeats, 75)
    assert_rejects(capsys, ch01.check_max_repeats, None, "no answer yet")
    assert_rejects(capsys, ch01.check_max_repeats, 77, "special tokens included")
    assert_rejects(capsys, ch01.check_max_repeats, 76, "two, start and end")
    assert_rejects(capsys, ch01.check_max_repeats, 10, "is not it")
