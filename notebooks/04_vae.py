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
# # 4. The VAE: from pixels to latents and back
#
# Stable Diffusion does not denoise pixels. It denoises a **latent**: a small 4-channel map
# that an autoencoder has learned to translate to and from images (Rombach et al., 2022,
# "latent diffusion"). At 512 px:
#
# $$x \in \mathbb R^{512 \times 512 \times 3}
#   \;\xrightarrow{\ \mathcal E\ }\; z \in \mathbb R^{64 \times 64 \times 4}
#   \;\xrightarrow{\ \mathcal D\ }\; \hat x \approx x,
#   \qquad \frac{512 \cdot 512 \cdot 3}{64 \cdot 64 \cdot 4} = 48$$
#
# 48 times fewer numbers for the UNet to process at every one of its 50 steps. The encoder
# $\mathcal E$ is only needed to *make* latents from images (training, image-to-image); text to
# image only runs the decoder $\mathcal D$, once, at the end.
#
# The autoencoder is a **VAE**: the encoder predicts a Gaussian per latent number, a mean
# $\mu$ and a log-variance $\log\sigma^2$, and during its training a KL term keeps the
# latents close to $\mathcal N(0, I)$. Like KerasCV, sdlearn keeps only the mean and
# multiplies it by a constant, the **latent scale** (0.18215 for SD), so the latents the UNet
# sees have a standard deviation of about 1:
#
# $$z = s \cdot \mu(x), \qquad \hat x = \mathcal D(z / s)$$
#
# This chapter: the decoder's and encoder's layers with their shapes, a check against KerasCV
# at full size, then the tiny track's VAE at work: the measured latent scale, the 4 latent
# channels as pictures, reconstructions, and a walk through latent space.

# %%
# ~6-35 s, ~0.7 GB on a 2-core CPU: imports Keras/TensorFlow, builds the tiny track's models
import logging
import time

import keras
import matplotlib.pyplot as plt
import numpy as np

import sdlearn.vae
from sdlearn.config import SD_V1
from sdlearn.course import at_most, load_pipeline, show_images, show_source
from sdlearn.shapes import Scene, make_dataset, render
from sdlearn.vae import Decoder, ImageEncoder, LatentMean, VAEAttention

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # no notes on retracing per batch size
sd = load_pipeline(jit_compile=False)  # XLA compiling costs more than it saves for a few calls
vae_config = sd.config.vae
decoder, encoder = sd.decoder, sd.image_encoder  # the encoder is built on first use
factor = vae_config.downsampling_factor
print(f"VAE config: {vae_config}")
print(f"decoder: {decoder.count_params():,} parameters, image encoder: "
      f"{encoder.count_params():,}; each latent pixel covers {factor}x{factor} image pixels")

# %%
print(sdlearn.vae.__doc__)

# %% [markdown]
# ## 1. The decoder
#
# The decoder is a plain stack of layers (`keras.Sequential`): undo the latent scale, a
# $1\times1$ convolution, a $3\times3$ convolution up to 512 channels, a **middle** of ResBlock,
# self-attention, ResBlock, then four levels of three ResBlocks each, with a nearest-neighbour
# $2\times$ upsampling and a convolution between levels, and finally GroupNorm, swish and a
# convolution to 3 channels. Its ResBlocks are chapter 3's, without a time input:
# $\mathrm{out} = \mathrm{skip}(x) + \mathrm{conv}(\mathrm{swish}(\mathrm{GN}(\mathrm{conv}(
# \mathrm{swish}(\mathrm{GN}(x))))))$.

# %%
show_source(Decoder)

# %% [markdown]
# The attention in the middle is single-headed self-attention over pixels, with $1\times1$
# convolutions for $W_q, W_k, W_v$: at 64x64 that is $4096^2$ pairs, which is why it sits only
# at the lowest resolution. It lets far-apart pixels agree (one sky, one colour).

# %%
show_source(VAEAttention)

# %% [markdown]
# ## 2. The encoder
#
# The mirror image: a convolution to 128 channels, two ResBlocks per level and a stride-2
# convolution between levels (widths 128, 256, 512, 512), the same middle, then a convolution
# to 8 channels (mean and log-variance of the 4 latent channels) and a $1\times1$ one. The
# stride-2 convolutions pad only the right and bottom edge, as SD's weights were trained.
# `LatentMean` keeps the 4 means and multiplies them by the scale $s$.

# %%
show_source(ImageEncoder)

# %%
show_source(LatentMean)

# %% [markdown]
# ### Both, at SD v1's size
#
# We build sdlearn's full-size `Decoder` and `ImageEncoder` (random weights) and read the
# shape after every layer from the models themselves, for a 512 px image (Keras traces the
# models symbolically: shapes only, no arithmetic).

# %%
# ~3-15 s, ~1.1 GB on a 2-core CPU: builds the SD v1 decoder and encoder (random weights)
start = time.perf_counter()
keras.utils.set_random_seed(0)
sd_decoder, sd_encoder = Decoder(SD_V1.vae), ImageEncoder(SD_V1.vae)
print(f"SD v1 decoder: {sd_decoder.count_params():,} parameters; image encoder: "
      f"{sd_encoder.count_params():,} (built in {time.perf_counter() - start:.0f} s)")


def layer_shapes(model, input_shape, run=False):
    """[(layer kind, output shape, parameters)] for each layer, read from the model."""
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers])
    if run:
        outputs = probe(np.zeros(input_shape, "float32"))
    else:
        outputs = probe.compute_output_spec(keras.KerasTensor(input_shape))
    kinds = []
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.Sequential):  # sdlearn.layers.upsample / downsample
            inner = [type(sub).__name__ for sub in layer.layers]
            kind = "Upsample" if "UpSampling2D" in inner else "Downsample (stride 2)"
        kinds.append(kind)
    return [(kind, tuple(out.shape[1:]), layer.count_params())
            for kind, out, layer in zip(kinds, outputs, model.layers)]


def print_layers(rows, title, input_shape):
    print(f"{title}\n     input {' ' * 18} {str(input_shape):16}")
    for i, (kind, shape, params) in enumerate(rows):
        print(f"{i:3d}  {kind:24} {str(shape):16} {params:12,}")
    print(f"{'':29} total {sum(row[2] for row in rows):16,} parameters")


sd_decoder_rows = layer_shapes(sd_decoder, (1, 64, 64, 4))
sd_encoder_rows = layer_shapes(sd_encoder, (1, 512, 512, 3))
print_layers(sd_decoder_rows, "SD v1 decoder, latent -> 512 px image", (64, 64, 4))

# %%
print_layers(sd_encoder_rows, "SD v1 image encoder, 512 px image -> latent", (512, 512, 3))


# %% [markdown]
# How many numbers flow out of each layer, $h \cdot w \cdot c$: the encoder squeezes
# 786,432 pixel values through a 16,384-number waist, the decoder blows it back up (and its
# widest map, 512x512x128, is 33.5 million numbers: that is where its time and memory go).

# %%
def activation_sizes(rows, input_shape):
    return [int(np.prod(input_shape))] + [int(np.prod(shape)) for _, shape, _ in rows]


encoder_sizes = activation_sizes(sd_encoder_rows, (512, 512, 3))
decoder_sizes = activation_sizes(sd_decoder_rows, (64, 64, 4))
fig, ax = plt.subplots(figsize=(9, 3.5))
ax.plot(range(len(encoder_sizes)), encoder_sizes, "o-", ms=3, label="encoder")
offset = len(encoder_sizes) - 1
ax.plot(range(offset, offset + len(decoder_sizes)), decoder_sizes, "o-", ms=3, label="decoder")
ax.axvline(offset, color="gray", ls=":", lw=1)
ax.annotate("latent 64x64x4\n16,384 numbers", (offset, decoder_sizes[0]),
            xytext=(offset - 9, 2e5), arrowprops=dict(arrowstyle="->"), fontsize=8)
ax.set_yscale("log")
ax.set_title("SD v1's VAE at 512 px (random weights: shapes only): numbers in each "
             "layer's output", fontsize=10)
ax.set_xlabel("layer (encoder, then decoder)")
ax.set_ylabel("h * w * c (log scale)")
ax.legend()
plt.show()

# %% [markdown]
# ### Same as KerasCV?
#
# KerasCV's `Decoder` and `ImageEncoder` are built with random weights and saved to legacy
# Keras `.h5` files, the format of the published `kcv_decoder.h5` and `vae_encoder.h5`. sdlearn's
# full-size models load those files with their own loader (layer by layer, in order), and both
# sides decode the same latent and encode the same image at 64 px (the arithmetic is the same
# at any size; small inputs keep the cell fast):

# %%
# ~8-30 s, ~1.5 GB on a 2-core CPU: builds KerasCV's decoder and encoder, writes, reads .h5
import tempfile
import warnings
from pathlib import Path

import h5py
from keras.src.legacy.saving import legacy_h5_format

warnings.filterwarnings("ignore", message="IProgress not found")  # keras_cv's tqdm import
from keras_cv.src.models.stable_diffusion.decoder import Decoder as KerasCVDecoder
from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder as KerasCVEncoder

start = time.perf_counter()
rng = np.random.default_rng(0)
latent = rng.standard_normal((1, 8, 8, 4)).astype("float32")
image = rng.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
with tempfile.TemporaryDirectory() as folder:
    for name, reference, ours, x in [
            ("decoder", KerasCVDecoder(64, 64, download_weights=False), sd_decoder, latent),
            ("image encoder", KerasCVEncoder(download_weights=False), sd_encoder, image)]:
        path = Path(folder) / f"{name.replace(' ', '_')}.h5"
        with h5py.File(path, "w") as f:  # what KerasCV's published files are
            legacy_h5_format.save_weights_to_hdf5_group(f, reference)
        ours.load_weights(path)  # sdlearn's own loader
        expected = np.asarray(reference(x))
        got = np.asarray(ours(x))
        print(f"{name:13}: {tuple(x.shape)} -> {tuple(got.shape)}, {path.stat().st_size / 1e6:.0f}"
              f" MB of weights; max |sdlearn - KerasCV| "
              f"{at_most(np.abs(got - expected).max(), floor=1e-5)} "
              f"(outputs up to {np.abs(expected).max():.2f})")
print(f"(in {time.perf_counter() - start:.0f} s)")
del sd_decoder, sd_encoder

# %% [markdown]
# Both agree to float32 rounding. (`tests/test_parity.py` repeats this with 2 inputs each, and
# runs the whole generation loop.)
#
# ## 3. The latent scale, measured
#
# Diffusion adds noise of variance 1 (chapter 5), so the latents should have variance about 1
# too: with a latent ten times larger, the noise would hardly hide it. The SD authors measured
# the standard deviation of their encoder's means on training images and took its inverse,
# $s = 1/\mathrm{std}(\mu) = 0.18215$. The tiny track's VAE was trained by sdlearn, and its
# scale measured the same way. Here, on 259 fresh shapes images:

# %%
# ~1-7 s on a 2-core CPU: renders and encodes 259 images
examples = [Scene("large", "red", "circle", "top left", "black"),
            Scene("large", "blue", "square", "bottom right", "white"),
            Scene("small", "yellow", "triangle", "center", "gray")]
images, captions, scenes = make_dataset(256, seed=123)
images = np.concatenate([np.stack([render(scene) for scene in examples]), images])
pixels = images.astype("float32") / 127.5 - 1.0  # uint8 -> [-1, 1], what the encoder takes
start = time.perf_counter()
latents = np.asarray(encoder.predict_on_batch(pixels))  # (259, h, w, 4), already times s
means = latents / vae_config.latent_scale  # mu, before the scale
print(f"images {pixels.shape} -> latents {latents.shape} "
      f"({time.perf_counter() - start:.1f} s; the first 3 are the examples of section 4)")
print(f"latent scale s in the config: {vae_config.latent_scale:.5g} (SD v1: "
      f"{SD_V1.vae.latent_scale})")
print(f"std before the scale (mu): {means.std():.3f}  ->  after (s * mu): {latents.std():.3f}")
print(f"mean after the scale: {latents.mean():.3f}; per channel std: "
      f"{np.round(latents.std(axis=(0, 1, 2)), 2)}")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.5))
grid = np.linspace(-4, 4, 200)
ax.hist(latents.ravel(), bins=80, range=(-4, 4), density=True, alpha=0.7,
        label=f"s * mu, std {latents.std():.2f}")
ax.hist(means.ravel(), bins=80, range=(-4, 4), density=True, alpha=0.4,
        label=f"mu (unscaled), std {means.std():.2f}")
ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1): the noise")
ax.set_title(f"Latent values of {len(latents)} shapes images ({sd.weights_source})")
ax.set_xlabel("latent value")
ax.set_ylabel("density")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The scale does its job: the scaled latents have a standard deviation of 1.01. They are not
# Gaussian, though: most values are piled between about -1.5 and 1.5, higher than the Gaussian
# there, with thin tails out to $\pm 4$; their mean is -0.16, not 0; and the channels differ
# (standard deviations from 0.66 to 1.07). The noise schedule only needs the overall size to
# match.
#
# ## 4. What a latent looks like
#
# A latent is still a picture, 8 times smaller, with 4 channels that are not colours. One
# image and its 4 channels on a common colour scale:

# %%
example_images, example_latents = images[:3], latents[:3]  # encoded in section 3
print("images", example_images.shape, "-> latents", example_latents.shape)

limit = np.abs(example_latents).max()
fig, axes = plt.subplots(len(examples), 5, figsize=(10, 2.1 * len(examples)),
                         layout="constrained")
for row, (scene_image, z) in enumerate(zip(example_images, example_latents)):
    axes[row, 0].imshow(scene_image)
    axes[row, 0].set_title("image", fontsize=8)
    for channel in range(4):
        im = axes[row, channel + 1].imshow(z[..., channel], cmap="RdBu_r", vmin=-limit,
                                           vmax=limit)
        axes[row, channel + 1].set_title(f"latent channel {channel}", fontsize=8)
for ax in axes.flat:
    unit = "px" if ax in axes[:, 0] else "latent px"
    ax.set_xlabel(f"x ({unit})", fontsize=7)
    ax.set_ylabel(f"y ({unit})", fontsize=7)
    ax.tick_params(labelsize=6)
fig.colorbar(im, ax=axes, fraction=0.02, label="latent value (s * mu)")
fig.suptitle(f"Images and their {example_latents.shape[1]}x{example_latents.shape[2]}x4 "
             f"latents ({sd.weights_source})")
plt.show()

# %% [markdown]
# The channels keep the layout: all three shapes sit where they sit in the image, one latent
# pixel per $8\times8$ block. The blue square is the strongest mark (channel 1 up to +4.1),
# the yellow triangle shows as a dark spot in channel 1 and a bright one in channel 2, and the
# red circle on black is fainter (positive in channel 2, negative in channels 0 and 3). The
# background sets the level of the whole map: away from the shape, channel 1 is about +1.1
# for black, -1.0 for white and +0.3 for gray, and channel 3 is strongly negative (-1.75) only
# for black. Colours are coded as *combinations* of channel values, which is why a latent looks
# like a strange false-colour thumbnail.
#
# ## 5. Reconstructions
#
# Encode, decode, compare: $\hat x = \mathcal D(\mathcal E(x))$. The decoder's output is in
# about $[-1, 1]$; `sd.decode` maps it to `uint8`.

# %%
# ~1-5 s on a 2-core CPU: the first decode call traces the decoder
originals = images[3:11]  # 8 random scenes
reconstructed = sd.decode(latents[3:11])  # (8, 64, 64, 3) uint8
error = np.abs(originals.astype(int) - reconstructed.astype(int))
print(f"mean absolute error: {error.mean():.2f} levels of 255; worst pixel {error.max()}")
show_images(np.concatenate([originals, reconstructed]),
            [f"original {i}" for i in range(8)] +
            [f"decoded {i}, err {e:.1f}" for i, e in enumerate(error.mean(axis=(1, 2, 3)))],
            suptitle=f"Top: shapes images; bottom: decode(encode(image)) ({sd.weights_source})",
            columns=8, size=1.4)

# %% [markdown]
# Shapes, colours and positions survive the round trip through 256 numbers (mean error 5.0 of
# 255 levels). What is lost: sharp edges (everything is slightly blurred, the square's corners
# rounded), and on gray backgrounds a faint coloured halo appears around the shape (blue
# around the orange and the yellow circle, images 0 and 5; yellow under the blue triangle,
# image 2), which is why the two largest errors are on gray (images 2 and 5, 7.1 and 6.2) and
# the two smallest on black (2.5 and 4.1).
#
# ## 6. A walk through latent space
#
# Two images, two latents $z_a$ and $z_b$. The straight line between them,
# $z(w) = (1 - w)\,z_a + w\,z_b$, decoded at a few $w$, next to the same blend done on pixels,
# $(1 - w)\,x_a + w\,x_b$:

# %%
a, b = example_latents[0], example_latents[1]
weights = np.linspace(0, 1, 8)
path = np.stack([(1 - w) * a + w * b for w in weights]).astype("float32")  # (8, h, w, 4)
walk = sd.decode(path)
pixel_blend = np.stack([(1 - w) * example_images[0] + w * example_images[1]
                        for w in weights]).astype("uint8")
show_images(np.concatenate([walk, pixel_blend]),
            [f"latent, w={w:.2f}" for w in weights] + [f"pixels, w={w:.2f}" for w in weights],
            suptitle=f"Interpolation: decoded latents (top) vs blended pixels (bottom) "
                     f"({sd.weights_source})", columns=8, size=1.4)

# %% [markdown]
# The ends are reconstructions of the two images. In between, the decoder is asked about
# latents no image produced, and it answers with its own mixture: up to $w = 0.29$ the red
# circle on black; at $w$ = 0.43 and 0.57 a muddy, blocky texture (dark green, then
# pinkish gray) in which both shapes show only faintly; from $w = 0.71$ the blue square on
# white, with a pale ghost of the circle until $w = 0.86$. The pixel blend, below, fades
# one image into the other instead. A straight line in latent
# space is not a path of valid scenes: for that, the diffusion model must take part
# (chapter 7 interpolates the *noise* and the *prompt* instead).
#
# ## 7. The compression, in numbers

# %%
for name, side, c in [("SD v1", 512, SD_V1.vae), ("tiny track", sd.config.image_size, vae_config)]:
    h = side // c.downsampling_factor
    pixels_count, latent_count = side * side * 3, h * h * c.latent_channels
    print(f"{name:10}: image {side}x{side}x3 = {pixels_count:,} numbers -> latent "
          f"{h}x{h}x{c.latent_channels} = {latent_count:,}: {pixels_count / latent_count:.0f}x "
          f"fewer ({pixels_count:,} bytes of uint8 vs {4 * latent_count:,} of float32: "
          f"{pixels_count / (4 * latent_count):.0f}x)")

# %% [markdown]
# ## Predict, then run
#
# 1. **Predict** what the decoder makes of the all-zero latent, and of a latent of pure
#    Gaussian noise (what sampling starts from). Then run.
# 2. The decoder has no layer that depends on the image size. **Predict**: what comes out for
#    a latent twice as wide as it is high? Then run.

# %%
noise = np.random.default_rng(0).standard_normal(latents[:1].shape).astype("float32")
show_images(sd.decode(np.concatenate([np.zeros_like(noise), noise])),
            ["decode(zeros)", "decode(N(0, I) noise)"],
            suptitle=f"Decoding latents no image made ({sd.weights_source})", size=2)

# %%
wide = sd.decode(np.concatenate([example_latents[:1], example_latents[1:2]], axis=2))
print("latent", (1, latents.shape[1], 2 * latents.shape[2], 4), "-> image", wide.shape)
show_images(wide, ["two latents side by side, decoded"], suptitle=sd.weights_source, size=3)

# %% [markdown]
# Zeros are close to the mean latent: a nearly flat gray-purple with a faint frame, an average
# of everything. Noise decodes to blotches of green, red, orange, blue and purple, not to a
# scene: the decoder alone cannot invent structure, the UNet's steps do that. And a wide
# latent gives a wide image (64x128 px), each half still showing its own layout (the red
# circle on the left, the blue square on the right), but with the **background colours
# wrong**: green instead of black, salmon pink instead of white. The decoder's GroupNorm layers
# normalise each channel group over the *whole* map, so each half is normalised with
# statistics that include the other half's very different background.
#
# ## Exercises
#
# **Exercise 1.** What is the shape (h, w, c) of SD v1's latent for a 512 px high, 768 px
# wide image?

# %%
from sdlearn.exercises.ch04_vae import (check_interpolation, check_latent_scale,
                                        check_latent_shape)

check_latent_shape(None)  # your answer: a tuple (h, w, c)

# %% tags=["hide-cell"]
check_latent_shape((512 // 8, 768 // 8, 4))


# %% [markdown]
# **Exercise 2.** Write `latent_scale(means)`: from a batch of *unscaled* encoder means, the
# number $s$ that gives the scaled latents a standard deviation of 1.

# %%
def latent_scale(means):
    return None  # your code here


check_latent_scale(latent_scale)


# %% tags=["hide-cell"]
def latent_scale(means):
    return 1.0 / np.std(means)


check_latent_scale(latent_scale)
print(f"on the tiny track's latents above: s = {latent_scale(means):.4g}")


# %% [markdown]
# **Exercise 3.** Write `interpolate(a, b, n)`: `n` latents evenly spaced on the line from `a`
# to `b`, both ends included, stacked to shape `(n, *a.shape)`.

# %%
def interpolate(a, b, n):
    return None  # your code here


check_interpolation(interpolate)


# %% tags=["hide-cell"]
def interpolate(a, b, n):
    w = np.linspace(0, 1, n).reshape(-1, *[1] * np.ndim(a))
    return (1 - w) * a + w * b


check_interpolation(interpolate)

# %% [markdown]
# **Next:** chapter 5 puts the pieces together in the sampling loop: noise, 50 UNet calls,
# and one call to this decoder.
