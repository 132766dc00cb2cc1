"""sdlearn's CLIP tokenizer against KerasCV's, plus padding, truncation, errors and hash check."""

import random

import numpy as np
import pytest

from sdlearn.tokenizer import END_TOKEN, MAX_LENGTH, START_TOKEN, VOCAB_PATH, Tokenizer

PROMPTS = [
    "",
    " ",
    "a photograph of an astronaut riding a horse",
    "a caterpillar smoking a hookah while sitting on a mushroom",
    "A PHOTOGRAPH of An AsTrOnAuT",
    "Hello, World!!!",
    "what?! no... yes; maybe: (perhaps) [brackets] {braces} <angles>",
    "trailing punctuation.",
    "--- *** ### $$$ %%% ^^^ &&& ~~~ ``` |||",
    "12345 67890",
    "3.14159 and 2,718,281 and 1e-10 and 0x1F",
    "4k 8K 1080p 16:9 f/2.8 50mm",
    "année, café, naïve, jalapeño, über, Ångström, façade",
    "e\u0301 (e plus combining acute) vs \u00e9",
    "İstanbul DİYARBAKIR ß ẞ ſ 'ſ",
    "ΑΘΗΝΑ Ελληνικά καλημέρα",
    "Москва, привет мир",
    "宇航员骑马的照片",
    "東京タワーの写真、夜景",
    "서울의 밤 풍경",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "emoji 😀😃😄 🚀🌕 👩‍🚀 🇫🇷🇯🇵 👍🏽 ❤️",
    "🐱",
    "a cat's toy",
    "don't, can't, won't, isn't",
    "they're here, we've gone, I'm fine, you'll see, he'd go",
    "THEY'RE SHOUTING, IT'S LOUD, DON'T",
    "'s 't 're 've 'm 'll 'd",
    "rock'n'roll o'clock ''quoted'' 'single'",
    "multiple    spaces   between words",
    "tabs\tand\t\ttabs",
    "new\nlines\n\n\nand\r\nwindows",
    "  leading and trailing whitespace  \n\t",
    "\u00a0non-breaking\u00a0space\u3000ideographic\u2003em space\u2028line sep",
    "\x1cfile\x1dgroup\x1erecord\x1funit separators\x1c",
    "\x00null\x07bell\x1bescape\x7fdelete",
    "\u200bzero\u200cwidth\u200djoiners\ufeffbom",
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 300,
    "abc" * 100,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "<b>bold</b> <i>italic</i> <a href=\"https://example.com\">link</a>",
    "&amp; &lt; &gt; &quot; &#39; &nbsp; &eacute; &#x1F600;",
    "&amp;amp; &amp;lt;b&amp;gt; double escaped",
    "&amp;amp;amp; triple escaped",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "<|STARTOFTEXT|> upper <|EndOfText|>",
    "<|endoftext|><|endoftext|>",
    "https://www.example.com/path?query=1&x=2#frag",
    "user@example.com #hashtag @mention",
    "def f(x): return x**2 + 1  # python",
    "C:\\Users\\name\\file.txt",
    "masterpiece, best quality, ultra-detailed, 8k, trending on artstation",
    "portrait of a woman, (intricate:1.2), [[[detailed eyes]]], {sharp focus}",
    "oil painting by Greg Rutkowski and Alphonse Mucha",
    "a red cube on a blue sphere, studio lighting, octane render",
    "½ ¼ ¾ ² ³ ° ± × ÷ µ ¶ § © ® ™ € £ ¥",
    "∑∫∂√∞≈≠≤≥ αβγ ∀x∃y",
    "①②③ Ⅷ ٣ ๓ 五",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３",
    "😀" * 40,
    "word " * 80,
    "a,b,c,d,e,f,g",
    "...",
    "!",
    "9",
    "I",
    "'",
    "ab'cd'ef",
    "mixedCASEwordsLikeCamelCase and snake_case_words and kebab-case-words",
    "\u0130\u0131\u212a\u2126 Kelvin Ohm",
    "ﬁ ﬂ ligatures",
    "𝕗𝕒𝕟𝕔𝕪 𝐛𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐",
    "Zalgo t̷̡e̵x̸t̶",
    "".join(chr(c) for c in range(1, 600)),
]


def random_prompts(count, seed=0):
    """Seeded random mixes of words, scripts, digits, punctuation and odd whitespace."""
    rng = random.Random(seed)
    atoms = ["horse", "Astronaut", "CAT", "'s", "'t", "'re", "!!", "?", ",", ".", "42", "7",
             "café", "日本", "🚀", "👩‍🚀", "&amp;", "<tag>", "über", "x" * 40, "Ωmega", "-",
             "<|endoftext|>", "a", "the", "don't", "ſ", "İ", "\u0301", "‰", "☃"]
    spaces = [" ", "", "  ", "\t", "\n", "\u3000", "\x1c", " \r\n "]
    return ["".join(rng.choice(atoms) + rng.choice(spaces) for _ in range(rng.randint(1, 25)))
            for _ in range(count)]


ALL_PROMPTS = PROMPTS + random_prompts(60)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


@pytest.fixture(scope="module")
def keras_cv_tokenizer():
    """KerasCV's tokenizer, reading our shipped vocabulary (its default downloads it)."""
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    return SimpleTokenizer(bpe_path=str(VOCAB_PATH))


def test_prompt_list_is_large_and_varied():
    assert len(ALL_PROMPTS) >= 100
    assert len(set(ALL_PROMPTS)) == len(ALL_PROMPTS)


def test_vocabulary_matches_keras_cv(tokenizer, keras_cv_tokenizer):
    assert len(tokenizer.token_to_id) == 49408
    assert tokenizer.token_to_id == keras_cv_tokenizer.encoder


@pytest.mark.parametrize("index", range(len(ALL_PROMPTS)))
def test_ids_match_keras_cv(tokenizer, keras_cv_tokenizer, index):
    prompt = ALL_PROMPTS[index]
    assert tokenizer.encode(prompt) == keras_cv_tokenizer.encode(prompt), repr(prompt)


def test_golden_ids(tokenizer):
    # KerasCV's own golden test (stable_diffusion_test.py) uses this prompt.
    caterpillar = "a caterpillar smoking a hookah while sitting on a mushroom"
    assert tokenizer.encode(caterpillar)[:5] == [49406, 320, 27111, 9038, 320]
    # "a</w> photograph</w> of</w> an</w> astronaut</w> riding</w> a</w> horse</w>"
    astronaut = "a photograph of an astronaut riding a horse"
    assert tokenizer.encode(astronaut) == [
        49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407
    ]


@pytest.mark.parametrize("text", ["a photograph of an astronaut riding a horse", "hello",
                                  "supercalifragilisticexpialidocious words", "x" * 100])
def test_decode_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_ignores_padding(tokenizer):
    assert tokenizer.decode(tokenizer("a red cube")[0]) == "a red cube"


def test_decode_names_ids_outside_the_vocabulary(tokenizer):
    with pytest.raises(ValueError, match=r"ids \[99999, -1\] are not in the vocabulary \(0 to 49"):
        tokenizer.decode([320, 99999, -1])


def test_call_pads_with_end_token(tokenizer):
    prompts = ["a photograph of an astronaut riding a horse", "cat", "", "Hello, World!"]
    batch = tokenizer(prompts)
    assert batch.shape == (4, MAX_LENGTH)
    assert batch.dtype == np.int32
    for row, prompt in zip(batch, prompts):
        ids = tokenizer.encode(prompt)
        assert row.tolist() == ids + [END_TOKEN] * (MAX_LENGTH - len(ids))
    assert tokenizer(tuple(prompts)).tolist() == batch.tolist()


def test_single_string_gives_batch_of_one(tokenizer):
    batch = tokenizer("a cat")
    assert batch.shape == (1, MAX_LENGTH) and batch.dtype == np.int32
    assert batch[0, :4].tolist() == [START_TOKEN, 320, 2368, END_TOKEN]


def test_unconditional_prompt(tokenizer):
    assert tokenizer("")[0].tolist() == [49406] + [49407] * 76


def test_exactly_77_tokens_is_allowed(tokenizer):
    prompt = "a " * 75  # start + 75 + end = 77
    assert len(tokenizer.encode(prompt)) == MAX_LENGTH
    assert tokenizer(prompt)[0].tolist() == tokenizer.encode(prompt)


def test_too_long_raises_with_token_count(tokenizer):
    prompt = "a " * 80  # 82 tokens
    with pytest.raises(ValueError, match=r"82 tokens.*77.*truncate=True"):
        tokenizer(["short", prompt])


def test_truncate_keeps_first_76_and_ends_with_end_token(tokenizer):
    prompt = " ".join(f"word{i}" for i in range(60))  # two tokens per word: 122 tokens
    ids = tokenizer.encode(prompt)
    row = tokenizer(prompt, truncate=True)[0]
    assert row.shape == (MAX_LENGTH,)
    assert row.tolist() == ids[: MAX_LENGTH - 1] + [END_TOKEN]
    assert row[-2] != END_TOKEN  # text runs right up to the end token


@pytest.mark.parametrize("bad", [42, None, b"bytes", ["ok", 3], np.array(["a"])])
def test_non_string_raises_type_error(tokenizer, bad):
    with pytest.raises(TypeError, match=r"prompts.*must be a str"):
        tokenizer(bad)


def test_type_error_names_the_element(tokenizer):
    with pytest.raises(TypeError, match=r"prompts\[1\].*None.*NoneType"):
        tokenizer(["ok", None])


def test_corrupted_vocabulary_is_rejected(tmp_path):
    data = bytearray(VOCAB_PATH.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    corrupted.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256") as error:
        Tokenizer(vocab_path=corrupted)
    assert str(corrupted) in str(error.value)
    assert "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a" in str(error.value)


def test_shipped_vocabulary_from_explicit_path(tmp_path):
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(VOCAB_PATH.read_bytes())
    assert Tokenizer(vocab_path=copy).encode("a cat") == [START_TOKEN, 320, 2368, END_TOKEN]
