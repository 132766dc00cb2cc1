"""The whole system: prompt -> image, and image + prompt -> image.

    prompt --Tokenizer--> tokens (B, 77) --TextEncoder--> context (B, 77, D)
    noise (B, h, w, 4) --[UNet eps_theta(x_t, t, context), DDIM step] x num_steps--> latent x_0
    latent x_0 --Decoder--> image (B, 8h, 8w, 3) in [-1, 1] --> uint8 pixels

Two tracks share this code: ``"tiny"`` (default) runs the small model sdlearn trains itself and
ships; ``"sd-v1"`` runs Stable Diffusion v1.4 with KerasCV's published weights (downloaded once).
"""

import numbers
import os
from pathlib import Path

import numpy as np

from sdlearn import fast, sampler
from sdlearn.checks import check_bool, check_choice, check_int, check_number
from sdlearn.config import StableDiffusionConfig, get_config
from sdlearn.text_encoder import TextEncoder
from sdlearn.tokenizer import Tokenizer
from sdlearn.unet import UNet
from sdlearn.vae import Decoder, ImageEncoder

MODEL_NAMES = ("text_encoder", "unet", "decoder", "image_encoder")


def default_weights(model, download=False):
    """{model name: path} of the weights a track runs with (verified by SHA-256 first)."""
    if model == "tiny":
        manifest = Path(__file__).parent / "data" / "tiny" / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"The tiny model's trained weights are not in this copy of sdlearn ({manifest} "
                "is missing): they ship once `sdlearn train` has produced them. Meanwhile use "
                "weights=None (random, untrained: pictures are noise) or model='sd-v1'.")
        from sdlearn.train import tiny_weights  # checks each file against the manifest's SHA-256

        return tiny_weights()
    if model == "sd-v1":
        from sdlearn.weights import weights_path

        return {name: weights_path(name, download_missing=download) for name in MODEL_NAMES}
    raise ValueError(f"No published weights for model {model!r}; pass weights=None for random "
                     "weights, or a dict of .h5 paths.")


def _check_arguments(config, weights, dtype_policy, **switches):
    """Name a wrong argument of StableDiffusion before anything is built or downloaded."""
    if not isinstance(config, StableDiffusionConfig):
        raise TypeError("config must be a sdlearn.config.StableDiffusionConfig (e.g. "
                        f"get_config('tiny')) or None, got {type(config).__name__}")
    if not (weights is None or isinstance(weights, dict) or isinstance(weights, str)
            and weights == "default"):
        raise ValueError(f"weights must be 'default', a dict of paths or None, got {weights!r}")
    if isinstance(weights, dict) and set(weights) != set(MODEL_NAMES):
        raise ValueError(f"weights must have the keys {MODEL_NAMES}, got {tuple(weights)}")
    for name, path in (weights.items() if isinstance(weights, dict) else ()):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"weights[{name!r}] must be the path of a .h5 file, got {path!r}")
    for name, value in switches.items():
        check_bool(name, value)
    check_choice("dtype_policy", dtype_policy, fast.DTYPE_POLICIES)


def check_image_size(config, image_size):
    """(height, width) of ``image_size``: None (the config's side), one int (a square) or
    (height, width); each side must divide into the VAE's 8 and the UNet's halvings."""
    size = config.image_size if image_size is None else image_size
    if isinstance(size, numbers.Integral):
        size = (size, size)
    if isinstance(size, str) or np.ndim(size) != 1 or len(size) != 2:
        raise ValueError(f"image_size must be one int (a square) or (height, width), "
                         f"got {image_size!r}")
    height, width = size
    f = config.vae.downsampling_factor * config.unet.downsampling_factor  # 8 * 2^halvings
    for name, value in (("height", height), ("width", width)):
        check_int(f"image {name}", value, 1)
        if value % f:
            lower, upper = value // f * f, (value // f + 1) * f
            raise ValueError(
                f"image {name} {value} is not a multiple of {f}: the VAE divides it by "
                f"{config.vae.downsampling_factor} and the UNet halves it "
                f"{len(config.unet.channels) - 1} more times. Use "
                f"{' or '.join(str(v) for v in (lower, upper) if v > 0)}.")
    return height, width


def check_request(config, batch_size, num_steps, guidance_scale, seed, image_size):
    """Name a wrong number of a generation before any model runs (or is built, or downloaded:
    ``sdlearn generate`` checks its options this way first); returns (height, width)."""
    check_int("batch_size", batch_size, 1)
    check_int("num_steps", num_steps, 1, len(sampler.ALPHAS_CUMPROD))
    if guidance_scale is not None:
        check_number("guidance_scale", guidance_scale, 0)
    if seed is not None:
        check_int("seed", seed, 0)
    return check_image_size(config, image_size)


class StableDiffusion:
    """Text-to-image and image-to-image with one of the configurations in ``sdlearn.config``.

    ``weights``: "default" (the track's own: shipped for "tiny", downloaded for "sd-v1"), a
    dict {"text_encoder"|"unet"|"decoder"|"image_encoder": path to .h5}, or None for random
    weights (``self.weights_source`` then says "random": such pictures are noise, not results).
    ``config``: the track's preset by default, or another configuration of the same track
    (``sdlearn.evaluate.TinyModel`` passes a training run's, which has its own latent scale).
    ``jit_compile``: run each model through XLA (the first call at a new shape compiles it).
    The other switches are fast paths (``sdlearn/fast.py`` explains and measures them); the
    defaults are the readable path. ``batched_guidance=False``: KerasCV's two UNet calls per
    step instead of one of batch 2B. ``compiled_loop=True``: the whole DDIM loop as one XLA
    program (no callback). ``dtype_policy``: "float32", "mixed_float16" or "mixed_bfloat16".
    """

    def __init__(self, model="tiny", weights="default", download=False, jit_compile=True,
                 batched_guidance=True, compiled_loop=False, dtype_policy="float32",
                 config=None):
        self.model_name, self.config = model, config or get_config(model)
        _check_arguments(self.config, weights, dtype_policy, download=download,
                         jit_compile=jit_compile, batched_guidance=batched_guidance,
                         compiled_loop=compiled_loop)
        self.weights = default_weights(model, download) if weights == "default" else weights
        self.weights_source = f"{model}, " + ("random (untrained) weights" if self.weights is None
                                             else "trained weights")
        self.tokenizer, self.dtype_policy = Tokenizer(), dtype_policy
        self.batched_guidance, self.compiled_loop, self._loops = batched_guidance, compiled_loop, {}
        self.text_encoder = self._build(TextEncoder, self.config.text_encoder, "text_encoder")
        self.unet = self._build(UNet, self.config.unet, "unet")
        self.decoder = self._build(Decoder, self.config.vae, "decoder")
        self._image_encoder, self.jit_compile = None, jit_compile
        for m in (self.text_encoder, self.unet, self.decoder):
            m.compile(jit_compile=jit_compile)

    def _build(self, cls, config, name):
        with fast.dtype_policy(self.dtype_policy):
            model = cls(config, name=name)
        if self.weights is not None:
            model.load_weights(self.weights[name])
        return model

    @property
    def image_encoder(self):
        """Built on first use: only image-to-image needs it."""
        if self._image_encoder is None:
            self._image_encoder = self._build(ImageEncoder, self.config.vae, "image_encoder")
            self._image_encoder.compile(jit_compile=self.jit_compile)
        return self._image_encoder

    def encode_text(self, prompt, truncate=False):
        """prompt (str or list of B str) -> context (B, 77, D)."""
        return self.text_encoder.predict_on_batch(self.tokenizer(prompt, truncate=truncate))

    def unet_call(self, inputs):
        """eps_theta for the sampler: one (jit-compiled) UNet call on [latent, t, context]."""
        return self.unet.predict_on_batch(inputs)

    def text_to_image(self, prompt, negative_prompt=None, batch_size=1, num_steps=50,
                      guidance_scale=None, seed=None, image_size=None, noise=None, callback=None):
        """uint8 images (batch_size, H, W, 3) for ``prompt``.

        ``image_size``: (H, W) or one int; default the track's (512 for sd-v1, 64 for tiny).
        ``guidance_scale``: default the track's (7.5 for sd-v1, 3 for tiny; see config.py).
        ``noise``: the initial latent (batch_size, H/8, W/8, 4), instead of drawing it from
        ``seed``. ``callback(i, t, x_t, pred_x0)`` sees every step (see ``sampler.sample``).
        """
        height, width = check_request(self.config, batch_size, num_steps, guidance_scale, seed,
                                      image_size)
        f = self.config.vae.downsampling_factor  # pixels per latent pixel: 8
        shape = (batch_size, height // f, width // f, self.config.unet.latent_channels)
        x_t = self._initial_noise(shape, seed, noise)
        latent = self._sample(prompt, negative_prompt, batch_size, x_t, num_steps,
                              guidance_scale, 0, callback)
        return self.decode(latent)

    def image_to_image(self, image, prompt, strength=0.75, negative_prompt=None, num_steps=50,
                       guidance_scale=None, seed=None, callback=None):
        """Re-imagine ``image`` (uint8, (H, W, 3) or (B, H, W, 3)) following ``prompt``.

        The image is encoded to x_0, noised to the level where ``strength`` of the num_steps
        steps remain (strength 0: unchanged, 1: forgotten), then denoised with the prompt.
        """
        images = _check_image(image)
        check_request(self.config, len(images), num_steps, guidance_scale, seed,
                      images.shape[1:3])
        start = sampler.img2img_start(num_steps, strength)
        x0 = self.image_encoder.predict_on_batch(images.astype("float32") / 127.5 - 1.0)
        if start == num_steps:  # strength 0: nothing to denoise (the prompts are still checked)
            self.tokenizer(prompt), self.tokenizer(negative_prompt or "")
            return self.decode(x0)
        noise = self._initial_noise(x0.shape, seed, None)
        alpha = sampler.ALPHAS_CUMPROD[sampler.ddim_timesteps(num_steps)[start]]
        x_t = sampler.add_noise(x0, noise, alpha)
        latent = self._sample(prompt, negative_prompt, len(images), x_t, num_steps,
                              guidance_scale, start, callback)
        return self.decode(latent)

    def decode(self, latent):
        """Latent (B, h, w, 4) -> uint8 image (B, 8h, 8w, 3): [-1, 1] mapped to 0..255."""
        latent = np.asarray(latent, "float32")  # one dtype: a float64 input would retrace
        channels = self.config.unet.latent_channels
        if latent.ndim != 4 or latent.shape[-1] != channels:
            raise ValueError(f"latent must have shape (B, h, w, {channels}), got {latent.shape}")
        image = np.asarray(self.decoder.predict_on_batch(latent), "float32")
        return np.clip((image + 1.0) * 127.5, 0, 255).astype("uint8")

    def _sample(self, prompt, negative_prompt, batch_size, x_t, num_steps, guidance_scale,
                start_step, callback):
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function (i, t, x_t, pred_x0), got {callback!r}")
        # One prompt (1, 77, D) is shared by the batch (the sampler repeats it); or B prompts.
        context, unconditional = (self.encode_text(p) for p in (prompt, negative_prompt or ""))
        for name, c in (("prompt", context), ("negative_prompt", unconditional)):
            if len(c) not in (1, batch_size):
                raise ValueError(f"{name} has {len(c)} prompts but batch_size is {batch_size}")
        if self.compiled_loop:
            if callback is not None:
                raise ValueError("compiled_loop=True runs all steps in one program: no callback")
            return fast.sample(self.unet, x_t, context, unconditional, num_steps,
                               guidance_scale, start_step, loops=self._loops)
        unet = self.unet_call  # guidance: one call of 2B; or KerasCV's two calls of B
        if not self.batched_guidance and guidance_scale != 1.0:
            unet = fast.guidance_in_two_calls(self.unet_call)
        return sampler.sample(unet, x_t, context, unconditional, num_steps, guidance_scale,
                              start_step, callback)

    def _initial_noise(self, shape, seed, noise):
        if noise is not None:
            if seed is not None:
                raise ValueError("Pass either noise or seed, not both: seed only draws noise.")
            try:
                noise = np.asarray(noise, dtype="float32")
            except (TypeError, ValueError):
                raise TypeError(f"noise must be an array of numbers, got {noise!r}") from None
            if noise.shape != tuple(shape):
                raise ValueError(f"noise must have shape {tuple(shape)}, got {noise.shape}")
            if not np.isfinite(noise).all():  # NaN would spread to every pixel: a black image
                raise ValueError("noise has NaN or infinite values")
            return noise
        # numpy's generator: the same seed gives the same noise on every Keras backend.
        return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _check_image(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 pixels (0..255), got dtype {image.dtype}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3) or (B, H, W, 3), got {image.shape}")
    return image


