# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
# ---

# %% [markdown]
# # 1. The tokenizer: from a prompt to 77 numbers
#
# A neural network cannot read letters. Before Stable Diffusion can follow
# "a red circle in the top left", the prompt must become a fixed-size list of integers, the
# **token ids**, that CLIP's text encoder was trained on. Stable Diffusion v1 uses CLIP's own
# tokenizer, unchanged: a **byte-pair encoding** (BPE; Sennrich et al., 2016) with a vocabulary
# of
#
# $$|V| = \underbrace{256}_{\text{bytes}} + \underbrace{256}_{\text{bytes ending a word}}
#        + \underbrace{48\,894}_{\text{merges}} + \underbrace{2}_{\text{start, end}} = 49\,408$$
#
# tokens, and a context of exactly 77 positions. Both tracks (tiny and SD v1.4) use this same
# tokenizer, so nothing in this chapter depends on trained weights.
#
# We rebuild it in five steps, each with the piece of `sdlearn.tokenizer` that does it:
#
# 1. **clean** the text, 2. cut it into **pieces** with a regular expression,
# 3. map **bytes to printable characters**, 4. **merge** characters into tokens,
# 5. **frame** the ids with start and end tokens and pad to 77.
#
# At the end we check, on a list of prompts, that our ids are exactly KerasCV's.

# %%
import matplotlib.pyplot as plt
import numpy as np

import sdlearn.tokenizer
from sdlearn.course import show_source
from sdlearn.tokenizer import (END_TOKEN, MAX_LENGTH, PIECES, START_TOKEN, Tokenizer,
                               bytes_to_unicode, clean)

tokenizer = Tokenizer()  # reads and hash-checks the shipped vocabulary file (~1 s)
prompt = "a red circle in the top left"
tokens = tokenizer(prompt)
print("prompt:", repr(prompt))
print("tokens:", tokens.shape, tokens.dtype)
print(tokens[0, :12], "...")

# %% [markdown]
# One prompt became a `(1, 77)` array of `int32`: the shape the text encoder takes, `(B, 77)`
# for a batch of `B` prompts. Where do these numbers come from? The module's docstring has the
# recipe:

# %%
print(sdlearn.tokenizer.__doc__)

# %% [markdown]
# ## Step 1: clean
#
# CLIP's vocabulary has no capital letters, and it should not matter whether a prompt came
# from a web page (`&amp;`) or has double spaces. `clean` unescapes HTML (twice, as CLIP does),
# collapses runs of whitespace into one space, strips the ends and lowercases.

# %%
show_source(clean)

# %%
for text in ["  A  Red   CIRCLE\t\n", "Salt &amp; Pepper", "fish &amp;amp; chips"]:
    print(f"{text!r:26} -> {clean(text)!r}")

# %% [markdown]
# ## Step 2: pre-tokenize into pieces
#
# BPE never merges across word boundaries. A regular expression cuts the cleaned text into
# **pieces**, tried in order: the special tokens, English endings (`'s`, `'t`, `'re`, ...),
# runs of letters (`\p{L}+`, any script), *single* digits (`\p{N}`), and runs of anything else
# that is not a space. Spaces themselves disappear here; step 4 marks the end of each piece
# instead.

# %%
print(PIECES.pattern)
for text in ["a cat's toy", "Tacos at dawn!!", "1080p, f/2.8", "café au lait"]:
    print(f"{text!r:18} -> {PIECES.findall(clean(text))}")

# %% [markdown]
# Digits are split one by one (`1`, `0`, `8`, `0`), so CLIP never learned a token for "1080";
# `!!` stays one piece, and so does `/`, `.` between letters and digits.
#
# ## Step 3: bytes to printable characters
#
# Every text, in any script and with emoji, is a sequence of UTF-8 **bytes**, so a vocabulary
# that starts from the 256 byte values can spell anything: there is no "unknown word" token.
# The vocabulary *file*, though, is plain text with merges written as `"t h"` on each line, so
# a token cannot contain a raw space, newline or control byte. `bytes_to_unicode` gives each
# byte a printable stand-in character.

# %%
show_source(bytes_to_unicode)

# %%
table = bytes_to_unicode()
kept = [b for b, c in table.items() if ord(c) == b]
moved = [b for b, c in table.items() if ord(c) != b]
print(f"{len(table)} bytes: {len(kept)} stand for themselves, {len(moved)} are moved")
print("examples of moved bytes:",
      {f"0x{b:02x}": table[b] for b in (0x00, 0x0A, 0x20, 0x7F, 0xAD)})

fig, ax = plt.subplots(figsize=(7, 3.2))
ax.scatter(kept, [ord(table[b]) for b in kept], s=6, label=f"printable, kept ({len(kept)})")
ax.scatter(moved, [ord(table[b]) for b in moved], s=6, color="tab:red",
           label=f"space/control, moved to 256+ ({len(moved)})")
ax.set_title("bytes_to_unicode: each byte's printable stand-in character")
ax.set_xlabel("byte value")
ax.set_ylabel("code point of its stand-in")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The space byte `0x20` becomes `Ġ` (code point 288). A piece such as `café` is first turned
# into its bytes, then into stand-ins: `é` is two bytes in UTF-8, so it becomes two
# characters. An emoji is four bytes.

# %%
for piece in ["cafe", "café", "🚀"]:
    data = piece.encode("utf-8")
    print(f"{piece!r:8} bytes {list(data)!s:24} -> {''.join(table[b] for b in data)!r}")

# %% [markdown]
# ## Step 4: byte-pair merges
#
# The vocabulary file lists 48,894 **merges**, most frequent first: the line number is the
# merge's **rank**. The first line says "join `i` and `n` wherever they stand next to each
# other". Each merge also adds one token to the vocabulary, so token ids are laid out as
# $\text{id} = 512 + \text{rank}$ after the 512 single-character tokens.

# %%
merges = sorted(tokenizer.merge_ranks, key=tokenizer.merge_ranks.get)
print(f"{len(merges)} merges; the first ten (rank: pair -> token id):")
for rank, pair in enumerate(merges[:10]):
    print(f"  {rank:>2}: {pair[0]!r:>7} + {pair[1]!r:<9} -> {tokenizer.token_to_id[''.join(pair)]}")

# %% [markdown]
# To split one piece, BPE starts from its characters, with `</w>` glued to the last one so
# that `a</w>` (the word "a") differs from the `a` inside "cat". Then, round after round, it
# finds the adjacent pair with the **lowest rank** and joins every occurrence of it, until no
# adjacent pair is a known merge. That is `Tokenizer.bpe`:

# %%
show_source(Tokenizer.bpe)


# %% [markdown]
# Let us replay `bpe` round by round on a few words, printing which merge wins each round, and
# check that we land where `tokenizer.bpe` lands. (This replay only reads `merge_ranks`; the
# tokenizer's own loop is the one above.)

# %%
def replay(piece):
    word = [*piece[:-1], piece[-1] + "</w>"]
    print(f"{piece!r}: start {word}")
    while len(word) > 1:
        pairs = list(zip(word, word[1:]))
        ranks = [tokenizer.merge_ranks.get(p, float("inf")) for p in pairs]
        if min(ranks) == float("inf"):
            break
        best = pairs[int(np.argmin(ranks))]
        joined, i = [], 0
        while i < len(word):
            if tuple(word[i:i + 2]) == best:
                joined, i = joined + [word[i] + word[i + 1]], i + 2
            else:
                joined, i = joined + [word[i]], i + 1
        word = joined
        print(f"  rank {min(ranks):>5}: join {best} -> {word}")
    assert word == tokenizer.bpe(piece), "the replay must agree with tokenizer.bpe"
    return word


_ = replay("circle")
_ = replay("tacos")

# %% [markdown]
# Common words end as a single token; rare ones stay in several pieces. This is how a fixed
# vocabulary of 49,408 covers every possible text.

# %%
words = ["red", "circle", "astronaut", "photorealistic", "octane", "greg", "rutkowski",
         "jalapeño", "supercalifragilisticexpialidocious"]
counts = [len(tokenizer.encode(w)) - 2 for w in words]  # minus start and end
for w in words:
    print(f"{w:>36}: {[tokenizer.id_to_token[i] for i in tokenizer.encode(w)[1:-1]]}")

fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(words[::-1], counts[::-1])
ax.set_title("Common words are one token, rare words several")
ax.set_xlabel("BPE tokens for the word")
ax.set_ylabel("word")
plt.show()

# %% [markdown]
# The merges were learned from text frequencies, so the later a merge (the higher its id),
# the longer and rarer its token tends to be:

# %%
ids = np.arange(512, 49406)
lengths = np.array([len(tokenizer.id_to_token[i].replace("</w>", "")) for i in ids])
bins = ids // 2000
mean_length = [lengths[bins == b].mean() for b in np.unique(bins)]
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(np.unique(bins) * 2000 + 1000, mean_length, marker="o")
ax.set_title("Later merges make longer tokens")
ax.set_xlabel("token id (512 + merge rank), bins of 2,000")
ax.set_ylabel("mean characters per token")
plt.show()
print(f"mean token length: ids 512-2,511: {mean_length[0]:.2f} chars; "
      f"last bin: {mean_length[-1]:.2f} chars")

# %% [markdown]
# ## Step 5: start, end, padding to 77
#
# `encode` runs steps 1 to 4 and frames the ids with the start token (49406) and the end token
# (49407). `__call__` then pads every prompt with the **end token** up to
# $T = 77$ positions, exactly what KerasCV and the original SD code feed the text encoder.
# Since CLIP's attention is causal (chapter 2), the padding after the prompt cannot change
# what the encoder computes for the prompt's own tokens.

# %%
show_source(Tokenizer.__call__)

# %%
batch = tokenizer(["a red circle", "", "a large blue square in the bottom right"])
print("batch:", batch.shape)
for row in batch:
    print(row[:12], "...", row[-3:])

# %% [markdown]
# The empty prompt `""` is `[49406] + [49407] * 76`: it is the "unconditional" prompt that
# classifier-free guidance compares against (chapter 5). A picture of the three rows:

# %%
kind = np.where(batch == START_TOKEN, 0, np.where(batch == END_TOKEN, 2, 1))
kind[np.arange(len(batch)), (batch == END_TOKEN).argmax(axis=1)] = 3  # the first end token
colours = plt.matplotlib.colors.ListedColormap(["tab:green", "tab:blue", "lightgray", "tab:red"])
fig, ax = plt.subplots(figsize=(9, 1.8))
ax.imshow(kind, cmap=colours, vmin=0, vmax=3, aspect="auto", interpolation="nearest")
ax.set_title("Three prompts framed to 77 positions")
ax.set_xlabel("position")
ax.set_ylabel("prompt")
ax.set_yticks(range(3), ["a red circle", '""', "a large blue square ..."], fontsize=8)
handles = [plt.matplotlib.patches.Patch(color=colours(i), label=label) for i, label in
           enumerate(["start 49406", "text", "padding 49407", "end 49407"])]
ax.legend(handles=handles, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
plt.show()

# %% [markdown]
# ### Too long: an error, or `truncate=True`
#
# CLIP never saw more than 77 positions (its position embedding has 77 rows), so a longer
# prompt cannot be encoded whole. sdlearn says so; `truncate=True` keeps the first 76 tokens
# and puts the end token last, as the original CLIP code does.

# %%
long_prompt = ", ".join(["a red circle"] * 30)
print("tokens in the long prompt:", len(tokenizer.encode(long_prompt)))
try:
    tokenizer(long_prompt)
except ValueError as error:
    print("ValueError:", error)

# %%
cut = tokenizer(long_prompt, truncate=True)
print(cut.shape, "last ids:", cut[0, -4:], "-> decoded tail:", tokenizer.decode(cut[0])[-30:])


# %% [markdown]
# ## Token tables for real prompts
#
# `decode` maps ids back to text (each `</w>` becomes a space). Here is every token of a few
# prompts: the position in the 77-row, the id, and the vocabulary entry (with the byte
# stand-ins of step 3 visible for non-ASCII text).

# %%
def token_table(prompt):
    ids = tokenizer.encode(prompt)
    print(f"{prompt!r}: {len(ids)} tokens, then {MAX_LENGTH - len(ids)} padding")
    print(f"  {'pos':>3}  {'id':>5}  {'token':<22} text")
    for position, i in enumerate(ids):
        print(f"  {position:>3}  {i:>5}  {tokenizer.id_to_token[i]:<22} "
              f"{tokenizer.decode([i])!r}")


for p in ["a large red circle in the top left on a black background",
          "a photograph of an astronaut riding a horse",
          "Tacos at dawn!! 🌮",
          "an oil painting of a café, 4k"]:
    token_table(p)

# %% [markdown]
# A few things to notice: `4k` is two pieces (a digit, then letters). "café" is one token
# whose stand-ins `Ã©` are the two bytes of `é`. The taco emoji is four bytes and BPE cut it
# into *two* tokens, three bytes and then the last byte with `</w>`: neither is a whole
# character, so decoding one alone gives the replacement character `�`. (The rocket 🚀 was
# frequent enough in CLIP's training text to get one token.) And `decode(encode(x))` gives
# back the cleaned text, with punctuation spaced out:

# %%
for p in ["A Red Circle", "Tacos at dawn!! 🌮", "an oil painting of a café, 4k"]:
    print(f"{p!r:34} -> {tokenizer.decode(tokenizer.encode(p))!r}")

# %% [markdown]
# ## Same ids as KerasCV
#
# KerasCV's Stable Diffusion ships its own `SimpleTokenizer`. We give it our copy of the
# vocabulary (the same file, so no download) and compare the ids on every caption of a
# shapes-world dataset plus a list of hard prompts: other scripts, emoji, HTML escapes, odd
# whitespace, contractions, long words.

# %%
# ~5-12 s, ~700 MB on a 2-core CPU: importing keras_cv imports TensorFlow
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # keras_cv imports tqdm.auto
from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

from sdlearn.shapes import make_dataset

reference = SimpleTokenizer(bpe_path=str(sdlearn.tokenizer.VOCAB_PATH))
hard = ["", "a photograph of an astronaut riding a horse", "A PHOTOGRAPH of An AsTrOnAuT",
        "Hello, World!!!", "what?! no... yes; maybe: (perhaps) [brackets]", "12345 67890",
        "3.14159 and 2,718,281 and 1e-10", "4k 8K 1080p 16:9 f/2.8 50mm",
        "année, café, naïve, jalapeño, über, Ångström", "e\u0301 vs \u00e9",
        "ΑΘΗΝΑ Ελληνικά", "Москва, привет мир", "宇航员骑马的照片", "東京タワーの写真",
        "서울의 밤 풍경", "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 😀😃 🚀🌕 👩‍🚀 🇫🇷 👍🏽",
        "don't, can't, won't", "they're here, we've gone, I'm fine, you'll see, he'd go",
        "rock'n'roll o'clock", "multiple    spaces\tand\ttabs\nand\r\nnewlines",
        "\u00a0non-breaking\u00a0space\u3000ideographic", "\u200bzero\u200cwidth\ufeffbom",
        "&amp; &lt; &gt; &quot; &#39;", "&amp;amp; double escaped",
        "<|startoftext|> literal special tokens <|endoftext|>",
        "pneumonoultramicroscopicsilicovolcanoconiosis", "abc" * 20]
_, captions, _ = make_dataset(500, seed=0)
prompts = hard + captions
mismatches = [p for p in prompts if tokenizer.encode(p) != reference.encode(p)]
print(f"compared {len(prompts)} prompts ({len(hard)} hard ones, {len(captions)} shapes "
      f"captions): {len(prompts) - len(mismatches)} identical, {len(mismatches)} different")
assert not mismatches

# %% [markdown]
# All identical. (`tests/test_tokenizer.py` compares many more, including random byte strings.)
# The tiny track reads its shapes captions through this same tokenizer, so a caption such as
# "a small blue triangle" is only 6 tokens followed by 71 padding tokens. When the tiny model
# draws, its text encoder still takes `(B, 77)`, like SD's. Its training (chapter 6) feeds it
# only the first 14 positions, up to the longest caption's end token: attention is causal, so
# the outputs at those positions are the same as with all 77, from a fifth of the tokens
# (a training step takes half the time: 259 ms instead of 533).
#
# ## Predict, then run
#
# Before running each line, write down what you expect.
#
# 1. How many tokens (with start and end) does `"Red"` give, and does it equal `"red"`?
# 2. Is `"circles"` one token or two? And `"triangles"`?
# 3. `"2024"`: how many tokens?
# 4. `"a red circle"` and `"a red circle "` (trailing space): same ids?

# %%
for p in ["Red", "red", "circles", "triangles", "2024", "a red circle", "a red circle "]:
    print(f"{p!r:16} {tokenizer.encode(p)}")

# %% [markdown]
# ## Exercises
#
# Each exercise has a `check_*` function that says what is wrong and gives a hint. Replace
# the `None` with your answer and run the cell. The solutions are in the hidden cells below
# each one.
#
# **Exercise 1.** Without running the tokenizer, write the pieces (step 2) of
# `"A cat's 2 toys!!"` as a list of strings.

# %%
from sdlearn.exercises.ch01_tokenizer import (check_empty_prompt, check_max_repeats,
                                              check_merge, check_pieces)

check_pieces(None)  # your answer, e.g. ["a", ...]

# %% tags=["hide-cell"]
check_pieces(["a", "cat", "'s", "2", "toys", "!!"])

# %% [markdown]
# **Exercise 2.** Write the 77 ids of the empty prompt `""` as a list, by hand.

# %%
check_empty_prompt(None)  # your answer: a list of 77 ints

# %% tags=["hide-cell"]
check_empty_prompt([START_TOKEN] + [END_TOKEN] * 76)


# %% [markdown]
# **Exercise 3.** Write `merge(word, pair)`: the inner step of BPE, which joins every
# occurrence of `pair` (two adjacent symbols) in `word` (a list of strings), left to right.
# For example `merge(["h", "e", "l", "l", "o</w>"], ("l", "l"))` is
# `["h", "e", "ll", "o</w>"]`. Mind `["a", "a", "a", "a</w>"]` with the pair `("a", "a")`.

# %%
def merge(word, pair):
    return None  # your code here


check_merge(merge)


# %% tags=["hide-cell"]
def merge(word, pair):
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


check_merge(merge)

# %% [markdown]
# **Exercise 4.** `"red"` is one token. How many times can it appear in a prompt
# (`"red red ... red"`) before `tokenizer(prompt)` raises the too-long error?

# %%
check_max_repeats(None)  # your answer: a number

# %% tags=["hide-cell"]
check_max_repeats(75)
tokenizer(" ".join(["red"] * 75))  # fits
try:
    tokenizer(" ".join(["red"] * 76))
except ValueError as error:
    print("76 repeats:", str(error)[:60], "...")

# %% [markdown]
# **Next:** chapter 2 turns these 77 ids into 77 vectors with CLIP's text encoder.
