"""The checked exercises of chapters 0, 1, 2 and 6 accept right answers and reject the typical
wrong ones with the message that explains them."""

import math

import numpy as np

from sdlearn.exercises import ch00_quickstart as ch00
from sdlearn.exercises import ch01_tokenizer as ch01
from sdlearn.exercises import ch02_text_encoder as ch02
from sdlearn.exercises import ch06_train as ch06
from sdlearn.text_encoder import quick_gelu
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


# ---- Chapter 0: the quickstart --------------------------------------------------------------
def test_ch00_latent_shape(capsys):
    assert_accepts(capsys, ch00.check_latent_shape, (2, 8, 8, 4))
    assert_accepts(capsys, ch00.check_latent_shape, [2, 8, 8, 4])
    assert_rejects(capsys, ch00.check_latent_shape, None, "no answer yet")
    assert_rejects(capsys, ch00.check_latent_shape, "2x8x8x4", "tuple of ints")
    assert_rejects(capsys, ch00.check_latent_shape, (8, 8, 4), "4 numbers")
    assert_rejects(capsys, ch00.check_latent_shape, (1, 8, 8, 4), "batch_size = 2")
    assert_rejects(capsys, ch00.check_latent_shape, (2, 64, 64, 4), "8 times smaller")
    assert_rejects(capsys, ch00.check_latent_shape, (2, 8, 8, 3), "4 channels")
    assert_rejects(capsys, ch00.check_latent_shape, (2, 16, 16, 4), "factor 8")


def test_ch00_context_shape(capsys):
    assert_accepts(capsys, ch00.check_context_shape, (3, 77, 768))
    assert_rejects(capsys, ch00.check_context_shape, None, "no answer yet")
    assert_rejects(capsys, ch00.check_context_shape, (3, 77), "token ids")
    assert_rejects(capsys, ch00.check_context_shape, (3, 768), "all 77")
    assert_rejects(capsys, ch00.check_context_shape, (1, 77, 768), "one context per prompt")
    assert_rejects(capsys, ch00.check_context_shape, (3, 5, 768), "padded to 77")
    assert_rejects(capsys, ch00.check_context_shape, (3, 77, 49408), "vocabulary")
    assert_rejects(capsys, ch00.check_context_shape, (3, 77, 1024), "768 wide")


def test_ch00_unet_calls(capsys):
    assert_accepts(capsys, ch00.check_unet_calls, 20)
    assert_rejects(capsys, ch00.check_unet_calls, None, "no answer yet")
    assert_rejects(capsys, ch00.check_unet_calls, 40, "ONE call on a batch of 2")
    assert_rejects(capsys, ch00.check_unet_calls, 21, "decoder")
    assert_rejects(capsys, ch00.check_unet_calls, 50, "num_steps=20")
    assert_rejects(capsys, ch00.check_unet_calls, 1, "once per step")
    assert_rejects(capsys, ch00.check_unet_calls, 7, "is not it")


def test_ch00_unet_calls_answer_is_what_the_pipeline_does():
    """The accepted answer (one UNet call of batch 2 per step) is what the pipeline does."""
    from sdlearn.pipeline import StableDiffusion

    sd = StableDiffusion("test", weights=None, jit_compile=False)
    calls, original = [], sd.unet_call
    sd.unet_call = lambda inputs: calls.append(len(inputs[0])) or original(inputs)
    sd.text_to_image("a red circle", num_steps=3, seed=0)
    assert calls == [2] * 3


# ---- Chapter 2: the text encoder ------------------------------------------------------------
def test_ch02_causal_mask(capsys):
    allowed = np.tril(np.ones((5, 5)))
    assert_accepts(capsys, ch02.check_causal_mask, allowed)
    assert_accepts(capsys, ch02.check_causal_mask, allowed.astype(bool).tolist())
    assert_rejects(capsys, ch02.check_causal_mask, None, "no answer yet")
    assert_rejects(capsys, ch02.check_causal_mask, np.tril(np.ones((4, 4))), "(5, 5)")
    assert_rejects(capsys, ch02.check_causal_mask, np.where(allowed, 0, -np.inf),
                   "1 (or True)")
    assert_rejects(capsys, ch02.check_causal_mask, allowed.T, "transposed")
    assert_rejects(capsys, ch02.check_causal_mask, np.tril(np.ones((5, 5)), -1), "itself")
    assert_rejects(capsys, ch02.check_causal_mask, np.ones((5, 5)), "no mask at all")
    wrong = allowed.copy()
    wrong[4, 0] = 0
    assert_rejects(capsys, ch02.check_causal_mask, wrong, "query 4, key 0")


def test_ch02_quick_gelu(capsys):
    assert_accepts(capsys, ch02.check_quick_gelu, lambda x: x / (1 + np.exp(-1.702 * x)))
    assert_accepts(capsys, ch02.check_quick_gelu,
                   lambda x: np.asarray(quick_gelu(x.astype("float32"))))
    assert_rejects(capsys, ch02.check_quick_gelu, None, "no answer yet")
    assert_rejects(capsys, ch02.check_quick_gelu, 1.702, "expected a function")
    assert_rejects(capsys, ch02.check_quick_gelu, lambda x: None, "returned None")
    assert_rejects(capsys, ch02.check_quick_gelu, lambda x: math.exp(x), "raised TypeError")
    assert_rejects(capsys, ch02.check_quick_gelu, lambda x: 1 / (1 + np.exp(-1.702 * x)),
                   "multiply it by x")
    assert_rejects(capsys, ch02.check_quick_gelu, lambda x: x / (1 + np.exp(-x)), "SiLU")
    assert_rejects(capsys, ch02.check_quick_gelu,
                   lambda x: np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]),
                   "GELU itself")
    assert_rejects(capsys, ch02.check_quick_gelu, lambda x: np.maximum(x, 0), "at x =")
    assert_rejects(capsys, ch02.check_quick_gelu, lambda x: x.sum(), "elementwise")


def test_ch02_clip_layer_parameters(capsys):
    from sdlearn.config import TextEncoderConfig
    from sdlearn.text_encoder import CLIPLayer

    layer = CLIPLayer(TextEncoderConfig())
    layer(np.zeros((1, 77, 768), "float32"))
    assert ch02.clip_layer_parameters() == layer.count_params() == 7_087_872
    assert_accepts(capsys, ch02.check_clip_layer_parameters, 7_087_872)
    assert_rejects(capsys, ch02.check_clip_layer_parameters, None, "no answer yet")
    assert_rejects(capsys, ch02.check_clip_layer_parameters, 123_060_480, "whole text encoder")
    assert_rejects(capsys, ch02.check_clip_layer_parameters, 123_060_480 // 12, "one layer")
    assert_rejects(capsys, ch02.check_clip_layer_parameters, 4 * 768 * 768 + 2 * 768 * 3072,
                   "biases")
    assert_rejects(capsys, ch02.check_clip_layer_parameters, 7_087_872 - 4 * 768, "LayerNorms")
    assert_rejects(capsys, ch02.check_clip_layer_parameters,
                   7_087_872 - 3 * (768 * 768 + 768), "q, k and v")
    assert_rejects(capsys, ch02.check_clip_layer_parameters, 1000, "is not it")


def test_ch02_eos_position(capsys):
    assert_accepts(capsys, ch02.check_eos_position, 8)
    assert_rejects(capsys, ch02.check_eos_position, None, "no answer yet")
    assert_rejects(capsys, ch02.check_eos_position, 7, "last word")
    assert_rejects(capsys, ch02.check_eos_position, 9, "count from 0")
    assert_rejects(capsys, ch02.check_eos_position, 76, "padding")
    assert_rejects(capsys, ch02.check_eos_position, 3, "holds token 1746")
    assert_rejects(capsys, ch02.check_eos_position, 200, "not a position")


# ---- Chapter 6: training ------------------------------------------------------------------
def test_ch06_latent_scale(capsys):
    assert_accepts(capsys, ch06.check_latent_scale, lambda z: 1 / np.std(z))
    assert_rejects(capsys, ch06.check_latent_scale, None, "no answer yet")
    assert_rejects(capsys, ch06.check_latent_scale, 0.18215, "expected a function")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: None, "returned None")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: z.foo, "raised AttributeError")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: 0.18215, "SD's number")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: np.std(z), "its inverse")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: 1 / np.var(z), "variance")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: 1 / np.sqrt(np.mean(z**2)),
                   "root-mean-square")
    assert_rejects(capsys, ch06.check_latent_scale, lambda z: 1.0, "not 1")


def test_ch06_noisy_latent(capsys):
    assert_accepts(capsys, ch06.check_noisy_latent,
                   lambda x0, e, a: np.sqrt(a) * x0 + np.sqrt(1 - a) * e)
    assert_rejects(capsys, ch06.check_noisy_latent, None, "no answer yet")
    assert_rejects(capsys, ch06.check_noisy_latent, lambda x0, e, a: a * x0 + (1 - a) * e,
                   "square roots")
    assert_rejects(capsys, ch06.check_noisy_latent,
                   lambda x0, e, a: np.sqrt(a) * x0 + (1 - a) * e, "sqrt(1 - alpha)")
    assert_rejects(capsys, ch06.check_noisy_latent,
                   lambda x0, e, a: np.sqrt(1 - a) * x0 + np.sqrt(a) * e, "swapped")
    assert_rejects(capsys, ch06.check_noisy_latent, lambda x0, e, a: (x0 + e).sum(), "shape")
    assert_rejects(capsys, ch06.check_noisy_latent, lambda x0, e, a: x0 + e, "forward process")


def cross_entropy(z):
    z = z - z.max(axis=1, keepdims=True)
    return -np.mean(np.diag(z - np.log(np.exp(z).sum(axis=1, keepdims=True))))


def test_ch06_clip_loss(capsys):
    import keras

    def keras_clip_loss(logits):  # the way sdlearn.train's CLIPTrainer computes it
        labels = np.arange(len(logits))
        return np.mean(0.5 * (
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            + keras.losses.sparse_categorical_crossentropy(labels, logits.T, from_logits=True)))

    assert_accepts(capsys, ch06.check_clip_loss,
                   lambda z: 0.5 * (cross_entropy(z) + cross_entropy(z.T)))
    assert_accepts(capsys, ch06.check_clip_loss, keras_clip_loss)
    assert_rejects(capsys, ch06.check_clip_loss, None, "no answer yet")
    assert_rejects(capsys, ch06.check_clip_loss, cross_entropy, "which image for each caption")
    assert_rejects(capsys, ch06.check_clip_loss, lambda z: cross_entropy(z.T),
                   "average it with the other direction")
    assert_rejects(capsys, ch06.check_clip_loss, lambda z: cross_entropy(z) + cross_entropy(z.T),
                   "mean")
    assert_rejects(capsys, ch06.check_clip_loss, lambda z: -cross_entropy(z), "sign")
    assert_rejects(capsys, ch06.check_clip_loss, lambda z: z, "one number")
    assert_rejects(capsys, ch06.check_clip_loss, lambda z: 0.5, "is not it")


def test_ch06_images_seen(capsys):
    def check(n):
        return ch06.check_images_seen(n, steps=2000, batch_size=64, num_images=12000)

    assert_accepts(capsys, check, (128000, 128000 / 12000))
    assert_rejects(capsys, check, None, "no answer yet")
    assert_rejects(capsys, check, 128000, "pair of numbers")
    assert_rejects(capsys, check, (2000, 1), "number of steps")
    assert_rejects(capsys, check, (12000, 1), "size of the dataset")
    assert_rejects(capsys, check, (100, 1), "examples is not it")
    assert_rejects(capsys, check, (128000, 64), "passes is not it")
