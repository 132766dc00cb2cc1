"""The pipeline's behaviour and its errors, on the toy TEST configuration (random weights)."""

import numpy as np
import pytest

from sdlearn.pipeline import StableDiffusion


@pytest.fixture(scope="module")
def sd():
    return StableDiffusion("test", weights=None, jit_compile=False)


def test_text_to_image_shape_dtype_and_label(sd):
    images = sd.text_to_image("a red circle", batch_size=2, num_steps=2, seed=0)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert "random" in sd.weights_source


def test_same_seed_same_images_other_seed_other_images(sd):
    a = sd.text_to_image("a blue square", num_steps=2, seed=7)
    b = sd.text_to_image("a blue square", num_steps=2, seed=7)
    c = sd.text_to_image("a blue square", num_steps=2, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).max() > 0


def test_explicit_noise_equals_seeded_noise(sd):
    noise = np.random.default_rng(5).standard_normal((1, 8, 8, 4)).astype("float32")
    a = sd.text_to_image("x", num_steps=2, noise=noise)
    b = sd.text_to_image("x", num_steps=2, seed=5)
    np.testing.assert_array_equal(a, b)


def test_negative_prompt_changes_the_result(sd):
    a = sd.text_to_image("a cat", num_steps=2, seed=1)
    b = sd.text_to_image("a cat", negative_prompt="a dog", num_steps=2, seed=1)
    assert np.abs(a.astype(int) - b).max() > 0


def test_non_square_sizes(sd):
    assert sd.text_to_image("x", num_steps=1, seed=0, image_size=(32, 96)).shape == (1, 32, 96, 3)


def test_callback_sees_every_step(sd):
    seen = []
    sd.text_to_image("x", num_steps=3, seed=0, callback=lambda i, t, x, x0: seen.append((i, t)))
    assert [i for i, _ in seen] == [0, 1, 2] and seen[0][1] == 999 and seen[-1][1] == 0


def test_image_to_image(sd):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = sd.image_to_image(image, "a green triangle", strength=0.5, num_steps=4, seed=0)
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.uint8
    # Strength 0 runs no step: the image only goes through the autoencoder.
    unchanged = sd.image_to_image(image, "anything", strength=0.0, num_steps=4)
    latent = sd.image_encoder.predict_on_batch(image[None].astype("float32") / 127.5 - 1)
    np.testing.assert_array_equal(unchanged, sd.decode(latent))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"prompt": 3}, TypeError, "prompt"),
    ({"prompt": "a " * 80}, ValueError, "tokens"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ({"batch_size": 1.5}, TypeError, "batch_size must be an integer"),
    ({"num_steps": 0}, ValueError, "num_steps"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale must be a finite number >= 0"),
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale must be a finite number"),
    ({"image_size": 0}, ValueError, "image height must be >= 1, got 0"),
    ({"image_size": (64,)}, ValueError, r"image_size must be one int \(a square\) or \(height, w"),
    ({"image_size": (64, 64, 64)}, ValueError, "image_size must be one int"),
    ({"image_size": 64.0}, ValueError, "image_size must be one int"),
    ({"image_size": "64"}, ValueError, "image_size must be one int"),
    ({"noise": np.full((1, 8, 8, 4), np.nan)}, ValueError, "noise has NaN or infinite values"),
    ({"noise": "abc"}, TypeError, "noise must be an array of numbers"),
    ({"callback": 5}, TypeError, "callback must be a function"),
    ({"image_size": 100}, ValueError, "height 100 is not a multiple of 32.*Use 96 or 128"),
    ({"image_size": (64, 48)}, ValueError, "width 48 is not a multiple of 32.*Use 32 or 64"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 1, "noise": np.zeros((1, 8, 8, 4))}, ValueError, "either noise or seed"),
    ({"noise": np.zeros((1, 4, 4, 4))}, ValueError, r"noise must have shape \(1, 8, 8, 4\)"),
    ({"prompt": ["a", "b"], "batch_size": 3}, ValueError, "2 prompts but batch_size is 3"),
])
def test_bad_arguments_say_what_is_wrong(sd, kwargs, error, words):
    arguments = {"prompt": "a red circle", "num_steps": 1, **kwargs}
    with pytest.raises(error, match=words):
        sd.text_to_image(**arguments)


@pytest.mark.parametrize("image, kwargs, error, words", [
    (np.zeros((64, 64, 3), np.uint8), {"strength": 1.5}, ValueError,
     r"strength must be a finite number in \[0, 1\]"),
    # strength 0 runs no step, but its arguments are checked all the same
    (np.zeros((64, 64, 3), np.uint8), {"strength": 0.0, "seed": -5}, ValueError, "seed must be"),
    (np.zeros((64, 64, 3), np.uint8), {"strength": 0.0, "num_steps": 5000}, ValueError,
     r"num_steps must be in \[1, 1000\]"),
    (np.zeros((64, 64, 3), np.uint8), {"strength": 0.0, "guidance_scale": -3}, ValueError,
     "guidance_scale"),
    (np.zeros((0, 64, 64, 3), np.uint8), {}, ValueError, "batch_size must be >= 1, got 0"),
    (np.zeros((64, 64, 3), np.float32), {}, TypeError, "uint8"),
    (np.zeros((64, 64), np.uint8), {}, ValueError, r"\(H, W, 3\)"),
    (np.zeros((64, 48, 3), np.uint8), {}, ValueError, "width 48"),
])
def test_bad_images_say_what_is_wrong(sd, image, kwargs, error, words):
    with pytest.raises(error, match=words):
        sd.image_to_image(image, "a red circle", **{"num_steps": 2, **kwargs})


def test_strength_zero_still_checks_the_prompt(sd):
    with pytest.raises(TypeError, match="prompt"):
        sd.image_to_image(np.zeros((64, 64, 3), np.uint8), 123, strength=0.0)


def test_decode_names_a_latent_of_the_wrong_shape(sd):
    with pytest.raises(ValueError, match=r"shape \(B, h, w, 4\), got \(1, 8, 8, 3\)"):
        sd.decode(np.zeros((1, 8, 8, 3)))


def test_unknown_model_and_weights():
    with pytest.raises(ValueError, match="Unknown model configuration 'sd-v9'"):
        StableDiffusion("sd-v9")
    with pytest.raises(ValueError, match="weights must be"):
        StableDiffusion("test", weights="random")


@pytest.mark.parametrize("kwargs, error, words", [
    ({"weights": 5}, ValueError, "weights must be 'default', a dict of paths or None, got 5"),
    ({"weights": np.zeros(3)}, ValueError, "weights must be 'default', a dict of paths or None"),
    ({"weights": {"unet": "unet.h5"}}, ValueError,
     r"keys \('text_encoder', 'unet', 'decoder', 'image_encoder'\), got \('unet',\)"),
    ({"weights": dict.fromkeys(("text_encoder", "unet", "decoder", "image_encoder"), 5)},
     TypeError, r"weights\['text_encoder'\] must be the path of a .h5 file, got 5"),
    ({"config": "tiny"}, TypeError, "config must be a sdlearn.config.StableDiffusionConfig"),
    ({"jit_compile": "yes"}, TypeError, "jit_compile must be True or False, got 'yes'"),
    ({"compiled_loop": 1}, TypeError, "compiled_loop must be True or False, got 1"),
    ({"dtype_policy": "float64"}, ValueError,
     r"dtype_policy must be one of \('float32', 'mixed_float16', 'mixed_bfloat16'\)"),
])
def test_bad_constructor_arguments_are_named_before_anything_is_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        StableDiffusion("test", **{"weights": None, **kwargs})
