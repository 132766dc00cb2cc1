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
# # 7. Beyond text-to-image: image-to-image and latent walks
#
# The sampler of chapter 5 starts from pure noise and a prompt. Nothing forces either choice:
#
# 1. **image-to-image** starts from an *image*, encoded and partly noised, and lets the prompt
#    redraw it; one number, the **strength**, says how much;
# 2. **prompt interpolation** feeds the sampler contexts *between* two prompts;
# 3. **noise interpolation** feeds it starting noises between two seeds, and the right way to
#    mix two noises turns out to be spherical (slerp), not linear;
# 4. **latent walks** chain these into animations, saved as GIFs with Pillow (no ffmpeg), shown
#    here and as frame strips.
#
# Everything runs on the track `load_pipeline()` announces (the tiny shapes-world model by
# default; with `SDLEARN_TRACK=sd-v1` every cell works the same but takes minutes per image).

# %%
# ~6-45 s and ~0.7 GB on a 2-core CPU (importing TensorFlow, building the models)
import io
import logging
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image as ShowImage
from IPython.display import display
from PIL import Image

from sdlearn import sampler, shapes
from sdlearn.course import load_pipeline, show_images, show_source
from sdlearn.pipeline import StableDiffusion

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # no notes on retracing per batch size
sd = load_pipeline(jit_compile=False)  # XLA compiling costs more than it saves here
STEPS = 25  # DDIM steps throughout this chapter
latent_side = sd.config.image_size // 8
unconditional = sd.encode_text("")  # (1, 77, D): the empty prompt, for guidance


def describe(image):
    """What the shapes world's analyser reads in an image, in a few words."""
    read = shapes.analyse(image)
    return " ".join(str(v) for v in (read.colour, read.shape, read.position) if v) or "nothing"


# %% [markdown]
# ## 1. Image-to-image
#
# Text-to-image runs the sampler over all timesteps $t_0 = 999 > t_1 > \dots > t_{n-1} = 0$ from
# pure noise. Image-to-image encodes an image to a latent $x_0 = E(\text{image})$, skips the
# first steps, and noises $x_0$ to the timestep it starts at with the forward process:
#
# $$k = n - \operatorname{round}(\text{strength} \cdot n), \qquad
#   x_{t_k} = \sqrt{\bar\alpha_{t_k}}\, x_0 + \sqrt{1 - \bar\alpha_{t_k}}\, \epsilon ,$$
#
# then runs the remaining $n - k$ steps with the prompt. Strength 0 runs no step (the image
# only passes through the autoencoder); strength 1 starts at $t = 999$, like text-to-image.

# %%
show_source(sampler.img2img_start)

# %%
show_source(StableDiffusion.image_to_image)

# %%
strengths = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
timesteps = sampler.ddim_timesteps(STEPS)
print(f"{STEPS} steps | strength | start step k | steps run | start timestep | signal kept")
for strength in strengths:
    k = sampler.img2img_start(STEPS, strength)
    if k == STEPS:
        print(f"{'':9}|   {strength:.1f}    |     {k:2d}       |     0     |      -         |  1")
        continue
    t = timesteps[k]
    print(f"{'':9}|   {strength:.1f}    |     {k:2d}       |    {STEPS - k:2d}     |     {t:3d}"
          f"        | sqrt(alpha) = {np.sqrt(sampler.ALPHAS_CUMPROD[t]):.3f}")

# %% [markdown]
# Our input is a picture from the shapes world, drawn by `shapes.render`. First the
# autoencoder round trip on its own, which is what strength 0 returns:

# %%
# ~1-10 s on a 2-core CPU (the first calls of the encoder and decoder trace them)
scene = shapes.Scene("large", "red", "circle", "top left", "white")
image = shapes.render(scene)  # (64, 64, 3) uint8
x0 = sd.image_encoder.predict_on_batch(image[None].astype("float32") / 127.5 - 1)
print("image:", image.shape, image.dtype, "-> latent x_0:", x0.shape)
round_trip = sd.image_to_image(image, "anything", strength=0.0)
print("strength 0 equals decode(encode(image)):", np.array_equal(round_trip, sd.decode(x0)))
print(f"mean |round trip - input| = {np.abs(round_trip[0].astype(int) - image).mean():.1f} "
      "of 255 levels; reads as:", describe(round_trip[0]))

# %% [markdown]
# Now the strength knob, with two prompts: one that changes only the colour, one that changes
# everything. Same seed everywhere, so the noise is the same in every picture.

# %%
# ~4-30 s on a 2-core CPU (12 images, 150 UNet calls)
prompts = ("a large blue circle in the top left on a white background",
           "a small green triangle in the bottom right on a black background")
strip, titles = [], []
for prompt in prompts:
    for strength in strengths:
        out = sd.image_to_image(image, prompt, strength=strength, num_steps=STEPS, seed=0)
        strip.append(out[0])
        titles.append(f"strength {strength:.1f}:\n{describe(out[0])}")
show_images(np.stack(strip), titles, columns=len(strengths), size=1.7,
            suptitle=f"Image-to-image from '{shapes.caption(scene)}'\ntowards '{prompts[0]}' "
                     f"(top)\nand towards '{prompts[1]}' (bottom)")


# %% [markdown]
# Strength 0 returns the round trip through the autoencoder. The *shape* changes first.
# Towards the small green triangle in the bottom right on black, at 0.2 and 0.4 the model
# already draws a triangle, but a red one in the top left, on the input's white background;
# from 0.6 on the input is forgotten and the prompt wins entirely (a green triangle in the
# bottom right on black). Towards the blue circle (same shape and place), the colour holds
# longer: still red at 0.2 and 0.4, purple at 0.6, blue from 0.8, and the circle stays where
# it was all the way to 1.0. Colour, position and background are carried by the large-scale
# structure of the noisy latent, so they need more noise, and more steps, to change; the
# outline of the shape is a finer detail, redrawn by the last few steps.

# %% [markdown]
# ## 2. Prompt interpolation
#
# The prompt enters the sampler only as its context, a `(77, D)` array. Between two contexts
# $c_0$ and $c_1$ lie infinitely many others. The simplest path is linear,
# $c(w) = (1 - w)\,c_0 + w\,c_1$; the spherical one (slerp) keeps the size of the vector:
#
# $$\operatorname{slerp}(v_0, v_1; w) = \frac{\sin((1-w)\theta)}{\sin\theta}\,v_0 +
#   \frac{\sin(w\theta)}{\sin\theta}\,v_1, \qquad
#   \cos\theta = \frac{v_0 \cdot v_1}{\lVert v_0\rVert \lVert v_1\rVert}.$$

# %%
def lerp(v0, v1, w):
    return (1 - w) * v0 + w * v1


def slerp(v0, v1, w):
    """Spherical interpolation between two arrays of the same shape, seen as flat vectors."""
    v0, v1 = np.asarray(v0, "float64"), np.asarray(v1, "float64")
    cos = np.sum(v0 * v1) / (np.linalg.norm(v0) * np.linalg.norm(v1))
    theta = np.arccos(np.clip(cos, -1, 1))
    if theta < 1e-4:  # (almost) the same direction: slerp is lerp
        return lerp(v0, v1, w)
    return (np.sin((1 - w) * theta) * v0 + np.sin(w * theta) * v1) / np.sin(theta)


def angle(v0, v1):
    cos = np.sum(v0 * v1) / (np.linalg.norm(v0) * np.linalg.norm(v1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


# %% [markdown]
# The sampler takes a *batch* of contexts and noises, so all frames of an interpolation can go
# through it together: one UNet call of batch $2F$ per step for $F$ frames. We always use
# batches of `FRAMES = 8`: the models are compiled for each input shape they meet, so one batch
# size means one compilation.

# %%
FRAMES = 8


def generate(contexts, noises):
    """Images (N, H, W, 3) for contexts (N, 77, D) and starting noises (N, h, w, 4),
    sampled FRAMES at a time with DDIM and the track's guidance scale (3 for tiny)."""
    images = []
    for i in range(0, len(contexts), FRAMES):
        latents = sampler.sample(sd.unet_call, noises[i:i + FRAMES],
                                 np.asarray(contexts[i:i + FRAMES], "float32"), unconditional,
                                 num_steps=STEPS, guidance_scale=sd.config.guidance_scale)
        images.append(sd.decode(latents))
    return np.concatenate(images)


prompt_a = "a red circle in the top left on a white background"
prompt_b = "a blue square in the bottom right on a white background"
c_a, c_b = sd.encode_text(prompt_a)[0], sd.encode_text(prompt_b)[0]  # (77, D) each
print("contexts:", c_a.shape, c_b.shape, f"| angle between them: {angle(c_a, c_b):.1f} degrees")
weights = np.linspace(0, 1, FRAMES)
for name, mix in (("lerp", lerp), ("slerp", slerp)):
    norms = [np.linalg.norm(mix(c_a, c_b, w)) / np.linalg.norm(c_a) for w in weights]
    print(f"{name:5}: |c(w)| / |c_a| from w = 0 to 1:", np.round(norms, 3))

# %% [markdown]
# The tiny model's two contexts are 70 degrees apart: its small text encoder (chapter 2) gives
# different prompts quite different vectors. So the linear path cuts well inside the sphere:
# in the middle of the walk the context is only 0.83 as long as either end, while slerp keeps
# the length. Here
# is the walk from one prompt to the other, from the same starting noise:

# %%
# ~5-35 s on a 2-core CPU (16 images, 50 UNet calls of batch 16; the first traces the UNet)
noise = np.random.default_rng(1).standard_normal((1, latent_side, latent_side, 4))
noises = np.repeat(noise, FRAMES, axis=0).astype("float32")  # the same noise for every frame
prompt_walk = {name: generate(np.stack([mix(c_a, c_b, w) for w in weights]), noises)
               for name, mix in (("lerp", lerp), ("slerp", slerp))}
print("frames:", prompt_walk["lerp"].shape)
print("largest pixel difference between the lerp and slerp walks:",
      int(np.abs(prompt_walk["lerp"].astype(int) - prompt_walk["slerp"]).max()), "of 255")
show_images(np.concatenate([prompt_walk["lerp"], prompt_walk["slerp"]]),
            [f"lerp w={w:.2f}" for w in weights] + [f"slerp w={w:.2f}" for w in weights],
            suptitle=f"From '{prompt_a}' to\n'{prompt_b}': linear (top) and spherical (bottom) "
                     "interpolation of the contexts", columns=FRAMES, size=1.4)

# %% [markdown]
# Neither walk is gradual: both keep the red circle in the top left up to $w = 0.43$, then
# jump, and from $w = 0.71$ on both show the blue square in the bottom right. Only the frame
# between differs visibly: at $w = 0.57$ lerp draws a purple-blue square near the top right,
# slerp one in the bottom left (the walks differ by up to 205 of 255 levels in some pixel).
# The tiny model treats these prompts as one or the other, with at most a frame of something
# else in between.
#
# ## 3. Noise interpolation
#
# Two seeds give two starting noises $\epsilon_a, \epsilon_b \sim \mathcal N(0, I)$ with
# $d = h \cdot w \cdot 4$ entries each. In high dimension two independent Gaussian vectors are
# almost orthogonal and almost the same length, $\sqrt d$. Their linear midpoint
# $\tfrac12(\epsilon_a + \epsilon_b)$ has variance $\tfrac14 + \tfrac14 = \tfrac12$ per entry: it
# is noise only $1/\sqrt2 \approx 0.71$ as strong as the sampler expects at $t = 999$. Slerp
# walks along the sphere instead, and every frame keeps the right size.

# %%
noise_a = np.random.default_rng(10).standard_normal((latent_side, latent_side, 4))
noise_b = np.random.default_rng(11).standard_normal((latent_side, latent_side, 4))
print("noises:", noise_a.shape, f"| angle: {angle(noise_a, noise_b):.1f} degrees")
fine = np.linspace(0, 1, 101)
fig, ax = plt.subplots(figsize=(6, 3.4))
for name, mix in (("lerp", lerp), ("slerp", slerp)):
    ax.plot(fine, [mix(noise_a, noise_b, w).std() for w in fine], label=name)
ax.axhline(1 / np.sqrt(2), color="gray", ls="--", lw=1, label=r"$1/\sqrt{2}$")
ax.set(title="Standard deviation of the mixed noise", xlabel="interpolation weight w",
       ylabel="std of the noise (1 expected)")
ax.legend()
plt.show()

# %%
# ~2-14 s on a 2-core CPU (16 images, 50 UNet calls of batch 16)
prompt = "a large circle on a black background"  # colour and position left to the noise
context = np.repeat(sd.encode_text(prompt), FRAMES, axis=0)
noise_walk = {}
for name, mix in (("lerp", lerp), ("slerp", slerp)):
    frames = np.stack([mix(noise_a, noise_b, w) for w in weights]).astype("float32")
    noise_walk[name] = generate(context, frames)
show_images(np.concatenate([noise_walk["lerp"], noise_walk["slerp"]]),
            [f"lerp w={w:.2f}" for w in weights] + [f"slerp w={w:.2f}" for w in weights],
            suptitle=f"'{prompt}' from seed 10 to seed 11: linear (top) and spherical (bottom) "
                     "interpolation of the starting noise", columns=FRAMES, size=1.4)
for name, images in noise_walk.items():
    print(f"{name:5} pixel std per frame:", [round(float(im.std()), 1) for im in images])


# %% [markdown]
# Both ends are red circles in the center (drawn a little angular): a small one from seed 10,
# a larger one from seed 11. Here the too-weak noise in the middle of the linear walk does no
# visible harm: the lerp frames stay in the center and the circle grows steadily (pixel
# standard deviation from 30 to 43). The slerp frames, each a proper $\mathcal N(0, I)$ sample,
# are ordinary samples of the prompt, and three of them are elsewhere: at $w$ = 0.43 to 0.71 the
# circle jumps to the top left, then comes back to the center. So with this pair of seeds the
# linear walk looks smoother, though its middle frames start from noise the sampler never
# expects; which one looks better depends on the seeds, while only slerp keeps every frame
# a valid starting noise.

# %% [markdown]
# ## 4. Latent walks as GIFs
#
# An animation is a walk with many frames. Two loops:
#
# - a **prompt loop**: the circle's position moves through the four corners, one linear
#   interpolation of contexts per edge, from one fixed noise;
# - a **noise loop**: $\epsilon(\varphi) = \cos\varphi\,\epsilon_a + \sin\varphi\,\epsilon_b$ for
#   $\varphi \in [0, 2\pi)$, a great circle through two independent noises. Every frame is
#   exactly $\mathcal N(0, I)$ distributed (a rotation of two independent Gaussians), and the
#   walk comes back to where it started.
#
# Pillow writes GIFs with `Image.save(..., save_all=True, append_images=...)`.

# %%
def save_gif(frames, path, ms_per_frame=150, scale=2):
    """Frames (N, H, W, 3) uint8 -> an endlessly looping GIF, each pixel drawn scale x scale."""
    height, width = frames.shape[1:3]
    images = [Image.fromarray(f).resize((width * scale, height * scale), Image.Resampling.NEAREST)
              for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=ms_per_frame, loop=0)


def show_strip(frames, labels, title, columns=8):
    """Every frame of a walk, in reading order: the static version of the GIF, for the book."""
    rows = -(-len(frames) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.55 * rows + 0.5),
                             squeeze=False)
    for ax, frame, label in zip(axes.flat, frames, labels):
        ax.imshow(frame)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel(label, fontsize=7)  # where on the walk this frame is
    for row in axes:
        row[0].set_ylabel(f"{frames.shape[1]} px", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.show()


out_dir = Path(tempfile.mkdtemp(prefix="sdlearn_ch07_"))  # somewhere to write the GIFs

# %%
# ~2-12 s on a 2-core CPU (16 frames, 50 UNet calls of batch 16)
corners = ("top left", "top right", "bottom right", "bottom left")
corner_contexts = [sd.encode_text(f"a red circle in the {c} on a white background")[0]
                   for c in corners]
per_edge = 4
walk_contexts, labels = [], []
for i, corner in enumerate(corners):  # edge i: corner i -> corner i+1 (the last edge closes it)
    for j in range(per_edge):
        w = j / per_edge
        walk_contexts.append(lerp(corner_contexts[i], corner_contexts[(i + 1) % 4], w))
        labels.append(f"{corner} +{w:.2f}")
walk_noise = np.repeat(noise, len(walk_contexts), axis=0).astype("float32")
prompt_loop = generate(np.stack(walk_contexts), walk_noise)
print("prompt loop:", prompt_loop.shape)
save_gif(prompt_loop, out_dir / "prompt_loop.gif")
display(ShowImage(data=(out_dir / "prompt_loop.gif").read_bytes(), format="gif"))

# %%
show_strip(prompt_loop, labels, "Prompt loop: 'a red circle in the <corner> on a white "
                                "background', 4 frames per edge")

# %% [markdown]
# The circle goes round the four corners, but it **jumps** rather than slides: the in-between
# contexts give one corner or the next (on the first edge the switch comes between +0.50 and
# +0.75, on the second between +0.25 and +0.50), never a position in between. The tiny model
# learned five positions, not a continuous coordinate.

# %%
# ~2-10 s on a 2-core CPU (16 frames, 50 UNet calls of batch 16)
phis = np.linspace(0, 2 * np.pi, 16, endpoint=False)
loop_noises = np.stack([np.cos(p) * noise_a + np.sin(p) * noise_b for p in phis])
print("noise loop:", loop_noises.shape, "| noise std per frame from",
      f"{loop_noises.reshape(16, -1).std(axis=1).min():.2f} to "
      f"{loop_noises.reshape(16, -1).std(axis=1).max():.2f}")
noise_loop = generate(np.repeat(sd.encode_text(prompt), 16, axis=0),
                      loop_noises.astype("float32"))
save_gif(noise_loop, out_dir / "noise_loop.gif")
with Image.open(out_dir / "noise_loop.gif") as gif:
    print(f"GIF written and read back: {gif.n_frames} frames of {gif.size[0]}x{gif.size[1]} px")
display(ShowImage(data=(out_dir / "noise_loop.gif").read_bytes(), format="gif"))

# %%
show_strip(noise_loop, [f"phi={np.degrees(p):.0f} deg" for p in phis],
           f"Noise loop: '{prompt}', cos(phi) noise_a + sin(phi) noise_b")

# %% [markdown]
# The noise loop passes through a few different samples, all red or orange circles on black:
# a small one in the center (0 and 22 degrees), one in the top left (45 and 68), a larger one
# in the center (90 and 112), an orange one in the top right (135 to 292), and back to the
# center (315 and 338), and it closes: the last frame leads back to the first.

# %% [markdown]
# To keep the GIFs, copy them out of the temporary folder (`out_dir`) or save them straight to
# a path of your own: `save_gif(noise_loop, "walk.gif")`. A GIF also fits in memory, which is
# how the notebook shows them: `save_gif(frames, buffer := io.BytesIO())`.

# %%
buffer = io.BytesIO()
save_gif(noise_loop, buffer)
print("the same GIF, written to memory:", buffer.getvalue() == (out_dir / "noise_loop.gif")
      .read_bytes())

# %% [markdown]
# ## Predict, then run
#
# 1. At strength 1.0, image-to-image starts at $t = 999$, the same timestep as text-to-image.
#    Given the same prompt and seed, will `image_to_image(image, prompt, strength=1.0)` and
#    `text_to_image(prompt)` draw the same picture?

# %%
prompt = "a large circle on a black background"
from_image = sd.image_to_image(image, prompt, strength=1.0, num_steps=STEPS, seed=3)
from_text = sd.text_to_image(prompt, num_steps=STEPS, seed=3)
print("image-to-image at strength 1 reads as:", describe(from_image[0]))
print("text-to-image, same seed, reads as:   ", describe(from_text[0]))
print("identical:", np.array_equal(from_image, from_text))

# %% [markdown]
# They are not identical: chapter 5's $\sqrt{\bar\alpha_{999}} = 0.068$ means 6.8% of the
# input's latent is still in $x_{999}$, and the noise is scaled by
# $\sqrt{1 - \bar\alpha_{999}} = 0.998$. Strength 1 does not quite forget the image.
#
# 2. Halfway between "a red circle" and "a blue circle", will the model draw a purple circle
#    (purple is a colour it knows), a red one, a blue one, or something else?

# %%
# ~1-5 s on a 2-core CPU (8 images, 25 UNet calls of batch 16)
c_red = sd.encode_text("a large red circle in the center on a white background")[0]
c_blue = sd.encode_text("a large blue circle in the center on a white background")[0]
halfway = generate(np.repeat(lerp(c_red, c_blue, 0.5)[None], FRAMES, axis=0),
                   np.random.default_rng(5).standard_normal(
                       (FRAMES, latent_side, latent_side, 4)).astype("float32"))
print("the halfway context, 8 seeds:", [shapes.analyse(im).colour for im in halfway])

# %% [markdown]
# Five of the eight read as blue and three as purple, none as red: halfway between "red" and
# "blue" in context space, the tiny model sometimes draws the colour that lies between them
# (one it knows from its own captions), but more often it picks the blue end. The middle of
# the contexts is not the middle of what the model draws.

# %% [markdown]
# ## Exercises
#
# Each exercise has a `check_*` function that says what is wrong and gives a hint. Replace the
# placeholder with your answer and run the cell; the hidden cell after it holds a solution.
#
# **Exercise 1.** Image-to-image with `num_steps=20` and `strength=0.43`: at which step index
# $k$ does the sampler start, and to which timestep $t_k$ is the encoded image noised?

# %%
from sdlearn.exercises.ch07_beyond import check_img2img_start, check_lerp_norm, check_noise_walk

check_img2img_start(None, None)  # your answer: (start step, timestep)

# %% tags=["hide-cell"]
k = sampler.img2img_start(20, 0.43)
check_img2img_start(k, sampler.ddim_timesteps(20)[k])


# %% [markdown]
# **Exercise 2.** Write `my_noise_walk(noise_a, noise_b, num_frames)`: `num_frames` starting
# noises from `noise_a` to `noise_b` (both `(h, w, 4)`), returned as one array
# `(num_frames, h, w, 4)`, evenly spaced, each of them usable as a starting noise.

# %%
def my_noise_walk(noise_a, noise_b, num_frames):
    return np.stack([noise_a] * num_frames)  # your code here


check_noise_walk(my_noise_walk)


# %% tags=["hide-cell"]
def my_noise_walk(noise_a, noise_b, num_frames):
    return np.stack([slerp(noise_a, noise_b, w) for w in np.linspace(0, 1, num_frames)])


check_noise_walk(my_noise_walk)

# %% [markdown]
# **Exercise 3.** Two independent standard-normal noises $a$ and $b$ have many entries. About
# what is $\lVert \tfrac12 a + \tfrac12 b \rVert / \lVert a \rVert$? Answer to two decimals,
# with pen and paper first; then measure it.

# %%
check_lerp_norm(None)  # your answer: a number

# %% tags=["hide-cell"]
a, b = np.random.default_rng(0).standard_normal((2, 10000))
check_lerp_norm(round(float(np.linalg.norm(0.5 * a + 0.5 * b) / np.linalg.norm(a)), 2))

# %% [markdown]
# **Next:** chapter 8 measures where the time goes, and makes it go faster.
