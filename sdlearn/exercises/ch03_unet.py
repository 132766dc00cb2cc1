"""Exercises for chapter 3, the UNet (notebooks/03_unet).

Each ``check_*`` prints "Correct!" or what is wrong with a hint, and returns True or False.
The references are written here in numpy, independently of ``sdlearn.unet``
(``tests/test_exercises_ch03_04.py`` checks that both agree).
"""

import math

import numpy as np

from sdlearn.exercises import verdict

# ---- 1. The sinusoidal timestep embedding ------------------------------------------------------


def _embedding(timesteps, dim, max_period=10000, order="cos-sin", denominator=None):
    half = dim // 2
    frequencies = np.exp(-math.log(max_period) * np.arange(half) / (denominator or half))
    angles = np.asarray(timesteps, dtype=np.float64)[:, None] * frequencies[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    if order == "sin-cos":
        return np.concatenate([sin, cos], axis=-1)
    if order == "interleaved":
        return np.stack([cos, sin], axis=-1).reshape(len(angles), dim)
    return np.concatenate([cos, sin], axis=-1)


def _call(fn, *args):
    """fn(*args) as a float64 numpy array, or (None, what went wrong)."""
    if not callable(fn):
        return None, f"pass your function itself, you passed {fn!r}"
    try:
        result = fn(*args)
        if result is None:
            return None, "your function returned None: write its body (and return the result)"
        return np.asarray(result, dtype=np.float64), None
    except Exception as error:  # a learner's code may fail in any way: report it, don't crash
        return None, f"your function raised {type(error).__name__}: {error}"


def check_timestep_embedding(fn):
    """``fn(timesteps, dim)``: timesteps (B,) -> (B, dim) sinusoidal features, as SD v1 uses."""
    timesteps, dim = np.array([0, 1, 10, 500, 999]), 320
    got, error = _call(fn, timesteps, dim)
    hint = ("f_i = 10000^(-i / (dim/2)) for i = 0 .. dim/2 - 1; angles = t * f_i; "
            "return [cos(angles), sin(angles)] concatenated on the last axis.")
    if error:
        return verdict([error], hint)
    if got.shape != (len(timesteps), dim):
        return verdict([f"for {len(timesteps)} timesteps and dim={dim} the result should have "
                        f"shape {(len(timesteps), dim)}, yours has {got.shape}"], hint)
    expected = _embedding(timesteps, dim)
    if np.allclose(got, expected, atol=1e-4):
        return verdict([])
    mistakes = [
        ("sin-cos", None, "you put the sines first; SD's trained weights expect the cosines "
                          "first ([cos, sin])"),
        ("interleaved", None, "you interleaved cos and sin (cos f_0, sin f_0, cos f_1, ...); "
                              "SD puts all dim/2 cosines first, then all sines"),
        ("cos-sin", dim, "your frequencies fall too slowly: divide i by dim/2, not by dim, so "
                         "the slowest wave has period about 10000"),
    ]
    for order, denominator, message in mistakes:
        if np.allclose(got, _embedding(timesteps, dim, order=order, denominator=denominator),
                       atol=1e-4):
            return verdict([message], hint)
    row, col = np.unravel_index(np.argmax(np.abs(got - expected)), got.shape)
    return verdict([f"at t={timesteps[row]}, feature {col} should be {expected[row, col]:.4f}, "
                    f"yours is {got[row, col]:.4f}"], hint)


# ---- 2. Counting a ResBlock's parameters -------------------------------------------------------


def resblock_parameters(channels_in, channels, time_dim, skip=True, time=True, biases=True,
                        norms=True):
    """Parameters of ``sdlearn.layers.ResBlock(channels, time_conditioned=True)`` on an input
    with ``channels_in`` channels (the flags leave parts out, to recognise mistakes)."""
    b = 1 if biases else 0
    count = 9 * channels_in * channels + b * channels  # conv1, 3x3
    count += 9 * channels * channels + b * channels  # conv2, 3x3
    if norms:
        count += 2 * channels_in + 2 * channels  # two GroupNorms: a scale and a shift per channel
    if time:
        count += time_dim * channels + b * channels  # Dense: time embedding -> channels
    if skip and channels_in != channels:
        count += channels_in * channels + b * channels  # 1x1 conv on the residual path
    return count


def check_resblock_parameters(count, channels_in=320, channels=640, time_dim=1280):
    """The parameter count of SD v1's ResBlock from ``channels_in`` to ``channels`` channels
    (default: the first block of level 1, 320 -> 640, time embedding 1280 wide)."""
    hint = ("add up: GroupNorm (2 per channel) -> 3x3 conv C_in -> C (9 C_in C + C) -> Dense from "
            "the time embedding (time_dim C + C) -> GroupNorm -> 3x3 conv C -> C, and a 1x1 conv "
            "on the skip path when C_in != C.")
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool):
        return verdict([f"give the count as an integer, you gave {count!r}"], hint)
    expected = resblock_parameters(channels_in, channels, time_dim)
    if count == expected:
        return verdict([])
    variants = [
        (dict(skip=False), "you left out the 1x1 convolution on the skip path: the input has "
                           f"{channels_in} channels and the output {channels}, so x cannot be "
                           "added as it is"),
        (dict(time=False), "you left out the Dense layer that projects the timestep embedding "
                           f"({time_dim} wide) to {channels} channels"),
        (dict(biases=False), "you left out the biases (one per output channel of every conv "
                             "and Dense)"),
        (dict(norms=False), "you left out the two GroupNorms (a scale and a shift per channel)"),
    ]
    for flags, message in variants:
        if count == resblock_parameters(channels_in, channels, time_dim, **flags):
            return verdict([message], hint)
    direction = "too many" if count > expected else "too few"
    return verdict([f"{count:,} is {direction}; the difference is {abs(count - expected):,}"],
                   hint)


# ---- 3. The 12 skips ---------------------------------------------------------------------------

SD_V1_SKIP_CHANNELS = [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280]


def check_skip_channels(channels):
    """The channel counts of SD v1's skips, in the order the down path stores them."""
    hint = ("store the first conv's output, then the output of every (ResBlock[, transformer]) "
            "pair and of every downsampling conv; widths 320, 640, 1280, 1280 by level, and a "
            "downsampling conv keeps the width of its level.")
    try:
        channels = [int(c) for c in channels]
    except (TypeError, ValueError):
        return verdict([f"give a list of integers, you gave {channels!r}"], hint)
    expected = SD_V1_SKIP_CHANNELS
    if channels == expected:
        return verdict([])
    if channels == expected[::-1]:
        return verdict(["that is the order the up path *uses* them (last in, first out); give "
                        "the order the down path stores them"], hint)
    if len(channels) == len(expected) - 1 and channels == expected[1:]:
        return verdict(["you missed the first skip: the output of the input convolution "
                        "(320 channels at full resolution) is stored too"], hint)
    if len(channels) != len(expected):
        return verdict([f"SD v1 stores {len(expected)} skips, your list has {len(channels)} "
                        "(the middle block's output is not a skip)"], hint)
    k = next(i for i, (a, b) in enumerate(zip(channels, expected)) if a != b)
    if k in (3, 6, 9):
        return verdict([f"skip {k} is the output of a downsampling conv: it halves H and W but "
                        f"keeps the width ({expected[k]}), it is not {channels[k]}"], hint)
    return verdict([f"skip {k} has {expected[k]} channels, not {channels[k]}"], hint)


# ---- 4. Cross-attention maps -------------------------------------------------------------------


def _softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _maps(q, k, height, width, axis=-1, scale=True):
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    weights = _softmax(scores, axis)[0].mean(axis=0)  # (HW, Tk)
    return weights.T.reshape(-1, height, width)


def check_cross_attention_maps(fn):
    """``fn(q, k, height, width)``: q (1, H*W, heads, d) from the pixels, k (1, T, heads, d) from
    the prompt -> (T, H, W): for each token, the weight each pixel gives it, averaged over
    the heads."""
    rng = np.random.default_rng(3)
    height, width, heads, d, tokens = 4, 6, 2, 8, 5
    q = rng.standard_normal((1, height * width, heads, d))
    k = rng.standard_normal((1, tokens, heads, d))
    hint = ("weights = softmax(q k^T / sqrt(d)) over the T tokens: einsum 'bqhd,bkhd->bhqk', "
            "softmax on the last axis, mean over heads, then (H*W, T) -> (T, H, W) with a "
            "transpose and a reshape.")
    got, error = _call(fn, q, k, height, width)
    if error:
        return verdict([error], hint)
    expected = _maps(q, k, height, width)
    if got.shape != expected.shape:
        extra = " (did you keep the heads instead of averaging them?)" if got.ndim == 4 else ""
        return verdict([f"for {tokens} tokens on a {height}x{width} map the result should have "
                        f"shape {expected.shape}, yours has {got.shape}{extra}"], hint)
    if np.allclose(got, expected, atol=1e-5):
        return verdict([])
    if np.allclose(got, _maps(q, k, height, width, axis=-2), atol=1e-5):
        return verdict(["your softmax runs over the pixels; each pixel (query) spreads its "
                        "attention over the tokens, so the weights must sum to 1 over tokens"],
                       hint)
    if np.allclose(got, _maps(q, k, height, width, scale=False), atol=1e-5):
        return verdict(["you forgot to divide the scores by sqrt(d), the head size"], hint)
    flipped = _maps(q, k, width, height).transpose(0, 2, 1)
    if got.shape == flipped.shape and np.allclose(got, flipped, atol=1e-5):
        return verdict(["the pixels are in row-major order (row by row), so reshape to "
                        "(T, height, width), not (T, width, height) then transpose"], hint)
    return verdict(["your maps differ from softmax(q k^T / sqrt(d)) averaged over heads "
                    f"(largest difference {np.abs(got - expected).max():.3g})"], hint)
