"""Exercises for chapter 4, the VAE (notebooks/04_vae).

Each ``check_*`` prints "Correct!" or what is wrong with a hint, and returns True or False.
"""

import numpy as np

from sdlearn.exercises import verdict
from sdlearn.exercises.ch03_unet import _call

# ---- 1. The latent's shape ---------------------------------------------------------------------


def check_latent_shape(shape, image_height=512, image_width=768):
    """The shape (h, w, c) of SD v1's latent for one image of image_height x image_width pixels."""
    hint = ("the encoder halves H and W three times (a factor 8) and keeps the 4 mean channels "
            "of its 8 outputs (mean and log-variance); shapes are (height, width, channels).")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return verdict([f"give a tuple of integers (h, w, c), you gave {shape!r}"], hint)
    h, w = image_height // 8, image_width // 8
    expected = (h, w, 4)
    if shape == expected:
        return verdict([])
    if len(shape) == 4:
        return verdict(["give the shape of one latent, (h, w, c), without the batch axis"], hint)
    if len(shape) != 3:
        return verdict([f"a latent has 3 axes (h, w, c), yours has {len(shape)}"], hint)
    if shape == (w, h, 4):
        return verdict(["height comes first: (h, w, c) with h from the image's height"], hint)
    if shape[:2] == (h, w):
        if shape[2] == 8:
            return verdict(["8 channels is the encoder's raw output, mean and log-variance of "
                            "4 channels each; the latent keeps the 4 means"], hint)
        if shape[2] == 3:
            return verdict(["the latent is not RGB: it has 4 channels"], hint)
        return verdict([f"the latent has 4 channels, not {shape[2]}"], hint)
    factor = image_height / shape[0] if shape[0] else 0
    return verdict([f"the height {shape[0]} is the image's divided by {factor:g}; the VAE "
                    "downsamples by 8"], hint)


# ---- 2. Measuring the latent scale -------------------------------------------------------------


def check_latent_scale(fn):
    """``fn(latents)``: unscaled encoder means (N, h, w, 4) -> the number that, multiplied in,
    gives latents of standard deviation 1 (SD's 0.18215 was measured this way)."""
    rng = np.random.default_rng(4)
    latents = (rng.standard_normal((8, 8, 8, 4)) * 5.0 + 0.7).astype("float32")
    hint = "the scale is 1 / std(latents), over all the numbers (np.std of the whole array)."
    got, error = _call(fn, latents)
    if error or got.size != 1:
        return verdict([error or f"return one number, yours has shape {got.shape}"], hint)
    got = float(got)
    std = float(latents.std())
    expected = 1.0 / std
    if abs(got - expected) <= 1e-3 * expected:
        return verdict([])
    if abs(got - std) <= 1e-3 * std:
        return verdict(["you returned the standard deviation itself; the scale divides by it, "
                        "so return its inverse"], hint)
    if abs(got - 1 / std**2) <= 1e-3 / std**2:
        return verdict(["you used the variance; the scale is 1 / standard deviation"], hint)
    if abs(got - 1 / float(np.abs(latents).max())) <= 1e-4:
        return verdict(["1 / max|z| squeezes the latents into [-1, 1]; the noise schedule wants "
                        "unit *standard deviation* instead"], hint)
    scaled_std = float((latents * got).std())
    return verdict([f"multiplied by your {got:.4g}, the latents have std {scaled_std:.3g}, "
                    "not 1"], hint)


# ---- 3. Interpolating between two latents ------------------------------------------------------


def check_interpolation(fn):
    """``fn(a, b, n)`` -> (n, *a.shape): n latents evenly spaced on the straight line from a
    (first) to b (last), both included."""
    rng = np.random.default_rng(5)
    a, b, n = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)), 5
    hint = ("w = np.linspace(0, 1, n) includes both ends; return (1 - w) a + w b for each w "
            "(broadcast w to shape (n, 1, 1, 1)).")
    got, error = _call(fn, a, b, n)
    if error:
        return verdict([error], hint)
    w = np.linspace(0, 1, n).reshape(-1, 1, 1, 1)
    expected = (1 - w) * a + w * b
    if got.shape != expected.shape:
        return verdict([f"for n={n} latents of shape {a.shape} the result should have shape "
                        f"{expected.shape}, yours has {got.shape}"], hint)
    if np.allclose(got, expected, atol=1e-6):
        return verdict([])
    if np.allclose(got, expected[::-1], atol=1e-6):
        return verdict(["your strip runs from b to a; it should start at a"], hint)
    if np.allclose(got[0], a, atol=1e-6) and not np.allclose(got[-1], b, atol=1e-6):
        return verdict(["the last latent should be b itself (did you leave out the endpoint, "
                        "as np.linspace(..., endpoint=False) or np.arange do?)"], hint)
    return verdict(["the latents are not evenly spaced on the line from a to b (largest "
                    f"difference {np.abs(got - expected).max():.3g})"], hint)
