"""Checked exercises for chapter 2, the text encoder (``notebooks/02_text_encoder``).

Each ``check_*`` prints "Correct!" or what is wrong with a hint, and returns True or False.
"""

import math

import numpy as np

from sdlearn.config import TextEncoderConfig
from sdlearn.exercises import verdict
from sdlearn.tokenizer import Tokenizer

MASK_SIZE = 5
EOS_PROMPT = "a small blue triangle in the center"


def _missing(answer, what):
    return f"no answer yet: replace None with {what}." if answer is None else None


def check_causal_mask(mask):
    """Exercise 1: the (5, 5) array of 0/1 (or bool) saying which key j each query i may
    attend to in CLIP's causal self-attention (row i = query, column j = key)."""
    if mask is None:
        return verdict([_missing(mask, "a 5x5 array")],
                       hint="np.tril, np.triu and np.ones((5, 5)) are all you need.")
    mask = np.asarray(mask)
    expected = np.tril(np.ones((MASK_SIZE, MASK_SIZE), dtype=bool))
    problems = []
    if mask.shape != expected.shape:
        problems.append(f"the mask has shape {mask.shape}; one row per query and one column "
                        f"per key gives {expected.shape}.")
    elif not np.isin(mask, (0, 1)).all():
        problems.append("use 1 (or True) for 'may attend' and 0 for 'masked', nothing else.")
    else:
        mask = mask.astype(bool)
        if (mask == expected.T).all():
            problems.append("your mask is transposed: query i would see keys i..4, the "
                            "future, and not the past.")
        elif (mask == np.tril(expected, -1)).all():
            problems.append("a token may attend to itself: the diagonal must be allowed too "
                            "(otherwise the first token has nothing to attend to).")
        elif mask.all():
            problems.append("that is no mask at all: every token sees the whole prompt.")
        elif (mask != expected).any():
            i, j = np.argwhere(mask != expected)[0]
            problems.append(f"query {i}, key {j} is {int(mask[i, j])}; it should be "
                            f"{int(expected[i, j])}.")
    return verdict(problems, hint="Query i may see keys 0..i: ones on and below the diagonal.")


def check_quick_gelu(quick_gelu):
    """Exercise 2: ``quick_gelu(x)`` for a numpy array x, CLIP's activation."""
    if quick_gelu is None:
        return verdict([_missing(quick_gelu, "your function")],
                       hint="x times a sigmoid of a scaled x.")
    x = np.linspace(-6, 6, 241).astype("float64")
    expected = x / (1 + np.exp(-1.702 * x))
    if not callable(quick_gelu):
        return verdict([f"expected a function, got {type(quick_gelu).__name__}"],
                       hint="Pass the function itself: check_quick_gelu(my_quick_gelu).")
    try:
        y = quick_gelu(x)
        if y is None:
            return verdict(["your function returned None: return the activations."],
                           hint="quick_gelu(x) = x * sigmoid(1.702 x).")
        y = np.asarray(y, dtype="float64")
    except Exception as error:  # the learner's code: report, do not crash the notebook
        return verdict([f"quick_gelu(x) raised {type(error).__name__}: {error}"],
                       hint="Use numpy functions (np.exp) so it works on whole arrays.")
    problems = []
    silu = x / (1 + np.exp(-x))
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    exact_gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    if y.shape != x.shape:
        problems.append(f"quick_gelu(x) has shape {y.shape}, expected {x.shape}: work "
                        "elementwise.")
    elif np.allclose(y, 1 / (1 + np.exp(-1.702 * x)), atol=1e-4):
        problems.append("that is only the gate sigmoid(1.702 x): multiply it by x.")
    elif np.allclose(y, silu, atol=1e-4):
        problems.append("that is SiLU, x * sigmoid(x): CLIP scales x by 1.702 inside the "
                        "sigmoid.")
    elif np.allclose(y, gelu, atol=1e-3) or np.allclose(y, exact_gelu, atol=1e-3):
        problems.append("that is GELU itself; quick_gelu is its cheap approximation, within "
                        "0.02 of it.")
    elif not np.allclose(y, expected, atol=1e-4):
        worst = int(np.abs(y - expected).argmax())
        problems.append(f"at x = {x[worst]:.2f} you give {y[worst]:.4f}, expected "
                        f"{expected[worst]:.4f}.")
    return verdict(problems, hint="quick_gelu(x) = x * sigmoid(1.702 x), and "
                   "sigmoid(z) = 1 / (1 + exp(-z)).")


def clip_layer_parameters(config=TextEncoderConfig()):
    """Parameters of one CLIPLayer (the answer to exercise 3 for ``config``)."""
    w, m = config.width, config.mlp_width
    attention = 4 * (w * w + w)  # q, k, v and out projections, each with a bias
    norms = 2 * 2 * w  # two LayerNorms, each a scale and a shift
    mlp = (w * m + m) + (m * w + w)
    return attention + norms + mlp


def check_clip_layer_parameters(n):
    """Exercise 3: the number of parameters of one CLIPLayer at SD v1's size
    (width 768, 12 heads, MLP width 3072)."""
    if n is None:
        return verdict([_missing(n, "a number")],
                       hint="Count the four attention projections, two LayerNorms, two Dense.")
    c = TextEncoderConfig()
    w, m = c.width, c.mlp_width
    expected = clip_layer_parameters(c)
    no_bias = 4 * w * w + 2 * w * m
    problems = []
    if n == expected:
        pass
    elif n == 123_060_480:
        problems.append("that is the whole text encoder; count one layer.")
    elif n == 123_060_480 // c.num_layers or n == expected * c.num_layers:
        problems.append("one layer, not the whole stack (nor the stack divided by 12: the "
                        "embeddings hold 38 M parameters outside the layers).")
    elif n in (no_bias, no_bias + 4 * w):
        problems.append("you left out the biases: every Dense layer in CLIP has one.")
    elif n == expected - 4 * w:
        problems.append("you left out the two LayerNorms' scale and shift (768 each).")
    elif n in (expected - 3 * w * w, expected - 3 * (w * w + w)):
        problems.append("q, k and v each have their own 768 x 768 projection (plus bias); "
                        "the heads split the result, they do not share or shrink it.")
    else:
        problems.append(f"{n:,} is not it.")
    return verdict(problems, hint="A Dense layer from a to b has a*b + b parameters; a "
                   "LayerNorm over w features has 2w.")


def check_eos_position(position):
    """Exercise 4: the position in the (77,) row whose vector CLIP pools for
    ``EOS_PROMPT`` (the first end token)."""
    if position is None:
        return verdict([_missing(position, "a number")],
                       hint="Count the tokens: one per word here, plus the start token.")
    tokens = Tokenizer()(EOS_PROMPT)[0]
    expected = int(np.argmax(tokens))  # the end token has the highest id; argmax finds the 1st
    problems = []
    if position == expected - 1:
        problems.append("that is the last word; the end token comes right after it.")
    elif position == expected + 1:
        problems.append("positions count from 0, and the start token is at 0.")
    elif position in (76, 77, -1):
        problems.append("the last position is padding; CLIP pools at the first end token, "
                        "the one that has read the whole prompt.")
    elif position != expected:
        problems.append(f"position {position} holds token {tokens[position]}"
                        if isinstance(position, int) and 0 <= position < 77
                        else f"{position!r} is not a position in 0..76.")
    return verdict(problems, hint="Position 0 is the start token, then one token per word, "
                   "then the first end token.")
