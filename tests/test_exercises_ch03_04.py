"""The checks of chapters 3 (UNet) and 4 (VAE) accept right answers and name typical mistakes."""

import math

import numpy as np
import pytest

from sdlearn.config import SD_V1
from sdlearn.exercises import ch03_unet, ch04_vae


def run(check, answer, capsys):
    ok = check(answer)
    return ok, capsys.readouterr().out


def assert_rejected(check, answer, capsys, *fragments):
    ok, out = run(check, answer, capsys)
    assert ok is False
    assert out.startswith("Not yet: ")
    assert "Hint: " in out
    for fragment in fragments:
        assert fragment in out, out


# ---- chapter 3 ---------------------------------------------------------------------------------

def embedding(t, dim, order="cos-sin", denominator=None):
    half = dim // 2
    f = np.exp(-math.log(10000) * np.arange(half) / (denominator or half))
    a = np.asarray(t, dtype="float64")[:, None] * f
    if order == "sin-cos":
        return np.concatenate([np.sin(a), np.cos(a)], -1)
    if order == "interleaved":
        return np.stack([np.cos(a), np.sin(a)], -1).reshape(len(a), dim)
    return np.concatenate([np.cos(a), np.sin(a)], -1)


def test_reference_embedding_is_sdlearns():
    from sdlearn.unet import timestep_embedding

    t = np.array([0, 3, 999])
    np.testing.assert_allclose(ch03_unet._embedding(t, 320), timestep_embedding(t, 320),
                               atol=2e-4)  # float32 angles up to 999 rad


def test_timestep_embedding_accepts_numpy_and_sdlearn(capsys):
    from sdlearn.unet import timestep_embedding

    assert run(ch03_unet.check_timestep_embedding, embedding, capsys) == (True, "Correct!\n")
    assert run(ch03_unet.check_timestep_embedding, timestep_embedding, capsys)[0]


@pytest.mark.parametrize("mistake, fragment", [
    (lambda t, d: embedding(t, d, order="sin-cos"), "sines first"),
    (lambda t, d: embedding(t, d, order="interleaved"), "interleaved"),
    (lambda t, d: embedding(t, d, denominator=d), "divide i by dim/2"),
    (lambda t, d: embedding(t, d)[:, : d // 2], "shape (5, 320)"),
    (lambda t, d: embedding(t * 2, d), "at t="),
    (lambda t, d: 1 / 0, "ZeroDivisionError"),
    (lambda t, d: None, "returned None"),  # the notebook's placeholder
    (None, "pass your function"),
])
def test_timestep_embedding_mistakes(mistake, fragment, capsys):
    assert_rejected(ch03_unet.check_timestep_embedding, mistake, capsys, fragment)


def test_resblock_count_is_the_layers():
    import keras

    from sdlearn.layers import ResBlock

    for c_in, c in ((8, 16), (16, 16)):
        block = ResBlock(c, norm_groups=4, time_conditioned=True)
        block(np.zeros((1, 4, 4, c_in), "float32"), np.zeros((1, 24), "float32"))
        assert block.count_params() == ch03_unet.resblock_parameters(c_in, c, 24)
    assert isinstance(block, keras.layers.Layer)
    assert ch03_unet.resblock_parameters(320, 640, 1280) == 6_558_080  # measured on SD v1


def test_resblock_parameters(capsys):
    check = ch03_unet.check_resblock_parameters
    assert run(check, 6_558_080, capsys)[0]
    assert run(lambda n: check(n, 1280, 1280), 31_138_560, capsys)[0]  # measured on SD v1
    assert_rejected(check, 6_558_080 - 205_440, capsys, "skip path")
    assert_rejected(check, 6_558_080 - 819_840, capsys, "timestep embedding")
    assert_rejected(check, ch03_unet.resblock_parameters(320, 640, 1280, biases=False), capsys,
                    "biases")
    assert_rejected(check, 6_558_080 - 1920, capsys, "GroupNorms")
    assert_rejected(check, 6_000_000, capsys, "too few", "558,080")
    assert_rejected(check, None, capsys, "integer")
    assert_rejected(check, 6_558_080.0, capsys, "integer")


def test_skip_channels_follow_the_config():
    c = SD_V1.unet
    skips = [c.channels[0]]
    for level, channels in enumerate(c.channels):
        skips += [channels] * c.res_blocks
        if level < len(c.channels) - 1:
            skips.append(channels)
    assert skips == ch03_unet.SD_V1_SKIP_CHANNELS


def test_skip_channels(capsys):
    check, right = ch03_unet.check_skip_channels, list(ch03_unet.SD_V1_SKIP_CHANNELS)
    assert run(check, right, capsys)[0]
    assert run(check, np.array(right), capsys)[0]
    assert_rejected(check, right[::-1], capsys, "last in, first out")
    assert_rejected(check, right[1:], capsys, "first skip")
    assert_rejected(check, right + [1280], capsys, "12 skips", "13")
    wrong = list(right)
    wrong[3] = 640
    assert_rejected(check, wrong, capsys, "downsampling conv", "320")
    wrong = list(right)
    wrong[4] = 320
    assert_rejected(check, wrong, capsys, "skip 4 has 640")
    assert_rejected(check, None, capsys, "list of integers")


def right_maps(q, k, height, width):
    from keras import ops

    from sdlearn.layers import attention_weights

    weights = ops.mean(attention_weights(q, k)[0], axis=0)  # (HW, T)
    return ops.reshape(ops.transpose(weights), (-1, height, width))


def test_cross_attention_maps(capsys):
    check = ch03_unet.check_cross_attention_maps
    assert run(check, right_maps, capsys)[0]

    def softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def maps(q, k, h, w, axis=-1, scale=True, transpose=False, keep_heads=False):
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / (math.sqrt(q.shape[-1]) if scale else 1)
        p = softmax(s, axis)[0]
        if keep_heads:
            return p.transpose(0, 2, 1).reshape(p.shape[0], -1, h, w)
        p = p.mean(0).T
        return p.reshape(-1, w, h).transpose(0, 2, 1) if transpose else p.reshape(-1, h, w)

    assert run(check, maps, capsys)[0]
    assert_rejected(check, lambda *a: maps(*a, axis=-2), capsys, "over the pixels")
    assert_rejected(check, lambda *a: maps(*a, scale=False), capsys, "sqrt(d)")
    assert_rejected(check, lambda *a: maps(*a, transpose=True), capsys, "row-major")
    assert_rejected(check, lambda *a: maps(*a, keep_heads=True), capsys, "averaging them")
    assert_rejected(check, lambda *a: 2 * maps(*a), capsys, "largest difference")
    assert_rejected(check, lambda *a: None, capsys, "returned None")


# ---- chapter 4 ---------------------------------------------------------------------------------

def test_latent_shape(capsys):
    check = ch04_vae.check_latent_shape
    assert run(check, (64, 96, 4), capsys) == (True, "Correct!\n")
    assert run(check, [64, 96, 4], capsys)[0]
    assert run(lambda s: check(s, 256, 256), (32, 32, 4), capsys)[0]
    assert_rejected(check, (96, 64, 4), capsys, "height comes first")
    assert_rejected(check, (64, 96, 8), capsys, "log-variance")
    assert_rejected(check, (64, 96, 3), capsys, "not RGB")
    assert_rejected(check, (1, 64, 96, 4), capsys, "batch")
    assert_rejected(check, (32, 48, 4), capsys, "divided by 16")
    assert_rejected(check, (64, 96), capsys, "3 axes")
    assert_rejected(check, None, capsys, "tuple of integers")


def test_latent_scale(capsys):
    check = ch04_vae.check_latent_scale
    assert run(check, lambda z: 1 / np.std(z), capsys) == (True, "Correct!\n")
    assert_rejected(check, lambda z: np.std(z), capsys, "inverse")
    assert_rejected(check, lambda z: 1 / np.var(z), capsys, "variance")
    assert_rejected(check, lambda z: 1 / np.abs(z).max(), capsys, "[-1, 1]")
    assert_rejected(check, lambda z: 0.18215, capsys, "std")
    assert_rejected(check, lambda z: None, capsys, "returned None")
    assert_rejected(check, lambda z: np.std(z, axis=0), capsys, "one number")
    assert_rejected(check, None, capsys, "pass your function")


def test_interpolation(capsys):
    check = ch04_vae.check_interpolation

    def lerp(a, b, n):
        w = np.linspace(0, 1, n).reshape(-1, *[1] * a.ndim)
        return (1 - w) * a + w * b

    assert run(check, lerp, capsys) == (True, "Correct!\n")
    assert_rejected(check, lambda a, b, n: lerp(b, a, n), capsys, "from b to a")
    assert_rejected(check, lambda a, b, n: np.stack([a + (b - a) * i / n for i in range(n)]),
                    capsys, "endpoint")
    assert_rejected(check, lambda a, b, n: lerp(a, b, n)[1:], capsys, "shape (5, 2, 3, 4)")
    assert_rejected(check, lambda a, b, n: lerp(a, b, n) ** 2, capsys, "evenly spaced")
    assert_rejected(check, lambda a, b, n: None, capsys, "returned None")
