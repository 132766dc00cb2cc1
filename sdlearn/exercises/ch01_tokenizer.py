"""Checked exercises for chapter 1, the tokenizer (``notebooks/01_tokenizer``).

Each ``check_*`` prints "Correct!" or what is wrong with a hint, and returns True or False.
"""

from sdlearn.exercises import verdict
from sdlearn.tokenizer import END_TOKEN, MAX_LENGTH, PIECES, START_TOKEN, clean

PIECES_TEXT = "A cat's 2 toys!!"


def _missing(answer, what):
    return f"no answer yet: replace None with {what}." if answer is None else None


def check_pieces(pieces):
    """Exercise 1: the pre-tokens (step 2) of ``PIECES_TEXT``, by hand, as a list of str."""
    expected = PIECES.findall(clean(PIECES_TEXT))  # ['a', 'cat', "'s", '2', 'toys', '!!']
    if pieces is None or not isinstance(pieces, (list, tuple)):
        return verdict([_missing(pieces, "a list of strings") or
                        f"expected a list of strings, got {type(pieces).__name__}"],
                       hint="Write something like ['first', 'second', ...].")
    pieces = list(pieces)
    problems = []
    if any(isinstance(p, str) and p != p.lower() for p in pieces):
        problems.append("a piece has capital letters, but step 1 (clean) lowercases the text.")
    if any(isinstance(p, str) and p.strip() != p for p in pieces) or " " in pieces:
        problems.append("a piece contains a space: spaces separate pieces and are never part "
                        "of one.")
    if "cat's" in pieces:
        problems.append("\"cat's\" is two pieces: the pattern has a rule for the ending 's.")
    if "s" in pieces and "'s" not in pieces:
        problems.append("the apostrophe and the s stay together as one piece, \"'s\".")
    if "!" in pieces:
        problems.append("a run of punctuation is one piece: '!!', not '!' twice.")
    if "toys!!" in pieces:
        problems.append("letters and punctuation never share a piece: 'toys' and '!!'.")
    if pieces != expected and not problems:
        problems.append(f"your {len(pieces)} pieces {pieces} are not the {len(expected)} "
                        "that PIECES finds.")
    return verdict(problems, hint="Apply clean() in your head, then read the PIECES pattern "
                   "left to right: endings like 's, runs of letters, single digits, runs of "
                   "other symbols. Spaces are dropped.")


def check_empty_prompt(ids):
    """Exercise 2: the 77 ids the tokenizer gives for the empty prompt "", written by hand."""
    if ids is None:
        return verdict([_missing(ids, "a list of 77 ints")],
                       hint="Think of the frame: start token, the prompt's tokens (none), end.")
    ids = [int(i) for i in list(ids)]
    expected = [START_TOKEN] + [END_TOKEN] * (MAX_LENGTH - 1)
    problems = []
    if len(ids) != MAX_LENGTH:
        problems.append(f"you have {len(ids)} ids; the text encoder always takes "
                        f"{MAX_LENGTH}.")
    elif ids[0] != START_TOKEN:
        problems.append(f"the first id is {ids[0]}, but every prompt starts with the start "
                        f"token {START_TOKEN}.")
    elif 0 in ids:
        problems.append(f"there is a 0 in your ids: CLIP (and SD) pad with the end token "
                        f"{END_TOKEN}, not with 0 (id 0 is the character '!').")
    elif ids != expected:
        wrong = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
        problems.append(f"position {wrong} holds {ids[wrong]}, expected {expected[wrong]}.")
    return verdict(problems, hint=f"Start with [{START_TOKEN}] and fill the rest with the "
                   f"end token: [{START_TOKEN}] + [{END_TOKEN}] * {MAX_LENGTH - 1}.")


# (word, pair, result) cases that a correct merge must get right, in the order they are tried.
MERGE_CASES = [
    (["h", "e", "l", "l", "o</w>"], ("l", "l"), ["h", "e", "ll", "o</w>"]),
    (["c", "a", "t</w>"], ("a", "t"), ["c", "a", "t</w>"]),
    (["a", "a", "a</w>"], ("a", "a"), ["aa", "a</w>"]),
    (["a", "a", "a", "a</w>"], ("a", "a"), ["aa", "a", "a</w>"]),
    (["a", "a", "a", "a"], ("a", "a"), ["aa", "aa"]),
    (["t", "h", "e", "t", "h", "e</w>"], ("t", "h"), ["th", "e", "th", "e</w>"]),
    (["c", "a", "t</w>"], ("a", "t</w>"), ["c", "at</w>"]),
    (["x</w>"], ("x", "y"), ["x</w>"]),
]


def check_merge(merge):
    """Exercise 3: ``merge(word, pair)`` joins every occurrence of ``pair`` in ``word``
    (a list of str), left to right, and returns the new list; ``word`` is left unchanged."""
    if merge is None:
        return verdict([_missing(merge, "your function merge(word, pair)")],
                       hint="Walk along the word with an index i; when word[i], word[i+1] is "
                       "the pair, append their concatenation and jump by 2.")
    if not callable(merge):
        return verdict([f"expected a function, got {type(merge).__name__}"],
                       hint="Pass the function itself: check_merge(merge), not merge(...).")
    problems = []
    for word, pair, expected in MERGE_CASES:
        try:
            result = merge(list(word), pair)
        except Exception as error:  # the learner's code: report, do not crash the notebook
            problems.append(f"merge({word}, {pair}) raised {type(error).__name__}: {error}")
            break
        if result is None:
            problems.append(f"merge({word}, {pair}) returned None: return the new list.")
            break
        if list(result) != expected:
            if list(result) == ["a", "aa", "a</w>"]:
                problems.append("overlapping pairs are merged left to right: "
                                f"merge({word}, {pair}) should give {expected}.")
            elif pair == ("a", "t") and list(result) != word:
                problems.append(f"'t</w>' is not 't': merge({word}, {pair}) must leave the "
                                "word alone, since the end-of-word mark is part of the symbol.")
            else:
                problems.append(f"merge({word}, {pair}) gave {list(result)}, "
                                f"expected {expected}.")
            break
    return verdict(problems, hint="Compare whole symbols (strings), never characters, and "
                   "after merging a pair skip both of its symbols.")


def check_max_repeats(n):
    """Exercise 4: the most times the one-token word "red" can appear in a prompt
    ("red red ... red") before the tokenizer refuses it (without truncate=True)."""
    if n is None:
        return verdict([_missing(n, "a number")], hint="Count the two special tokens.")
    expected = MAX_LENGTH - 2
    problems = []
    if n == MAX_LENGTH:
        problems.append(f"{MAX_LENGTH} is the length of the whole row, special tokens "
                        "included.")
    elif n == MAX_LENGTH - 1:
        problems.append("close: you counted one special token; there are two, start and end.")
    elif n != expected:
        problems.append(f"{n} is not it; each 'red' is one token.")
    return verdict(problems, hint=f"The row has {MAX_LENGTH} positions, and the start and end "
                   "tokens must both fit.")
