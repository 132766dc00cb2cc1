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
# # 0. Quickstart: a picture from a sentence, then the map of the whole system
#
# This course rebuilds Stable Diffusion v1 in readable Keras 3 code, `sdlearn`, and opens up
# every part of it. We start from the end: make a picture, then follow one prompt through the
# whole system with the shape of the data at every arrow. Chapters 1 to 5 then open each box.
#
# **Two tracks, one code path.** By default everything runs on the **tiny** track: the same
# sdlearn classes in a small configuration, trained by sdlearn itself on a world of coloured
# shapes, shipped with the package, runs offline on a laptop CPU in seconds. The **sd-v1**
# track runs the real Stable Diffusion v1.4 weights (see the end of this chapter). Every
# output says which track made it.
#
# ## Three lines

# %%
# ~10-35 s, ~0.8 GB on a 2-core CPU: imports Keras/TensorFlow, builds the three models, then
# generates (the first call of each model at a new shape traces it into a graph)
from sdlearn.course import load_pipeline

sd = load_pipeline(jit_compile=False)  # skip XLA compiling here: see below
images = sd.text_to_image("a large red circle in the top left on a black background", seed=0)

# %%
from sdlearn.course import show_images

print(images.shape, images.dtype)
show_images(images, ["a large red circle in the top left on a black background"],
            suptitle=sd.weights_source, size=3)

# %% [markdown]
# `text_to_image` returns `uint8` pixels, `(batch, height, width, 3)`. The seed fixes the
# starting noise, so the same call gives the same picture on any machine.
#
# `jit_compile=False` runs each network as a plain TensorFlow graph. sdlearn's default,
# `jit_compile=True`, also compiles each network with XLA at every new input shape; on the
# tiny model that compiling costs more time than it saves for the few calls this chapter
# makes at each shape (here it saves about a third of the notebook's CPU time; chapter 8
# measures both modes).
#
# What did the tiny model draw? A large red disc in the top left quarter on a black
# background: colour, shape, size, position and background are what the prompt asked for.
# It is not a perfect circle, though: the edge is soft and a little lumpy (a small bulge at
# the bottom). The tiny model was trained for about 30 minutes on a CPU, and its 8x8 latent
# is coarse; chapter 6 measures how often it gets each attribute right.
#
# A few more prompts, in one batched call (one prompt per image; each title is the prompt):

# %%
# ~5-35 s on a 2-core CPU: a new batch size traces the networks again
prompts = ["a large red circle in the top left on a black background",
           "a small blue square in the bottom right on a white background",
           "a large yellow triangle in the center on a gray background",
           "a large green square in the top right on a black background",
           "a small purple circle in the bottom left on a white background",
           "a large orange triangle in the center on a black background"]
batch = sd.text_to_image(prompts, batch_size=len(prompts), seed=1)
print(batch.shape)
show_images(batch, [p.replace(" in the", "\nin the").replace(" on a", "\non a") for p in prompts],
            suptitle=f"Six prompts, seed 1 ({sd.weights_source})", columns=6, size=2.2)

# %% [markdown]
# All six pictures match their prompts in colour, shape, position and background: two
# round discs, two squares and two triangles, each in the right place. They are not clean
# drawings, though: edges are soft, the red circle is a little lumpy, the blue square's sides
# bow and it has orange smudges around it on the white, and the yellow triangle on gray has a
# dark blue band under it and faint coloured ghosts around it. Keep that in mind in the
# chapters that follow: the tiny model is good enough to show what each part does, not a good
# image generator.
#
# ## The map of the system
#
# Stable Diffusion is three networks and a loop:
#
# 1. the **tokenizer** cuts the prompt into 77 token ids (chapter 1);
# 2. the **text encoder** turns them into 77 vectors, the context $c$ (chapter 2);
# 3. the **UNet** $\epsilon_\theta(x_t, t, c)$ predicts the noise in a noisy *latent* $x_t$
#    at noise level $t$ (chapter 3); the **sampler** calls it in a loop, from pure noise
#    $x_T$ to a clean latent $x_0$ (chapter 5);
# 4. the **decoder** of the variational autoencoder paints $x_0$ as an image 8 times larger
#    in each direction (chapter 4).
#
# The pipeline's source says the same:

# %%
import sdlearn.pipeline

print(sdlearn.pipeline.__doc__)

# %% [markdown]
# Let us run the stages one by one on one prompt and print what flows between them. These are
# the pipeline's own objects: `sd.tokenizer`, `sd.text_encoder`, `sd.unet`, `sd.decoder`, and
# the sampler in `sdlearn.sampler`.

# %%
# ~1-4 s on a 2-core CPU
import numpy as np

from sdlearn import sampler

prompt = prompts[0]
tokens = sd.tokenizer(prompt)  # (1, 77) int32
context = sd.text_encoder.predict_on_batch(tokens)  # (1, 77, D)
unconditional = sd.encode_text("")  # the empty prompt, for classifier-free guidance
side = sd.config.image_size // sd.config.vae.downsampling_factor  # 8x smaller than the image
noise = np.random.default_rng(0).standard_normal((1, side, side, 4)).astype("float32")
eps = sd.unet_call([noise, np.array([999.0], "float32"), context])  # one UNet call at t = 999
latent = sampler.sample(sd.unet_call, noise, context, unconditional, num_steps=50,
                        guidance_scale=sd.config.guidance_scale)  # the track's default
image = sd.decode(latent)

shapes = {"prompt": f"str ({len(prompt)} characters)", "tokens": tokens.shape,
          "context": context.shape, "noise x_T": noise.shape, "UNet eps": eps.shape,
          "latent x_0": tuple(latent.shape), "image": image.shape}
for name, shape in shapes.items():
    print(f"{name:>10}: {shape}")
print("max |stage by stage - text_to_image| =",
      np.abs(image.astype(int) - images.astype(int)).max(), "(uint8 levels)")

# %% [markdown]
# Stage by stage gives exactly the picture `text_to_image` made with seed 0: that is all the
# pipeline does. The same map, drawn from the shapes just printed:

# %%
import matplotlib.pyplot as plt


def box(ax, x, y, text, colour):
    ax.text(x, y, text, ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.4", facecolor=colour, edgecolor="black"))


def arrow(ax, start, end, label, **kwargs):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=1.5, **kwargs))
    ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, label, ha="center",
            fontsize=8, color="darkblue")


fig, ax = plt.subplots(figsize=(12, 3.6))
box(ax, 0.0, 1, '"a large red circle\nin the top left ..."', "white")
box(ax, 2.0, 1, "Tokenizer\n(ch. 1)", "lightyellow")
box(ax, 4.2, 1, "Text encoder\n(ch. 2)", "lightyellow")
box(ax, 0.0, 0, "Gaussian noise\nseed 0", "white")
box(ax, 4.2, 0, f"UNet eps_theta(x_t, t, c)\n(ch. 3) x {50} DDIM steps\n(sampler, ch. 5)",
    "lightblue")
box(ax, 7.0, 0, "Decoder\n(ch. 4)", "lightgreen")
picture = ax.inset_axes([8.95, -0.42, 0.9, 0.84], transform=ax.transData)
picture.imshow(image[0])
picture.set_xticks([])
picture.set_yticks([])
picture.set_title("image", fontsize=8)
arrow(ax, (0.75, 1), (1.45, 1), "")
arrow(ax, (2.55, 1), (3.45, 1), f"tokens {tokens.shape}")
arrow(ax, (4.2, 0.8), (4.2, 0.38), "")
ax.text(4.3, 0.6, f"context c {context.shape}", fontsize=8, color="darkblue")
arrow(ax, (0.6, 0), (3.05, 0), f"x_T {noise.shape}")
arrow(ax, (5.35, 0), (6.45, 0), f"x_0 {tuple(latent.shape)}")
arrow(ax, (7.55, 0), (8.9, 0), f"{image.shape} uint8")
ax.set_xlim(-1, 10)
ax.set_ylim(-0.5, 1.5)
ax.set_xticks([])
ax.set_yticks([0, 1], ["image path", "text path"])
ax.set_xlabel("data flows left to right; shapes as measured above (batch, ...)")
ax.set_ylabel("path")
ax.set_title(f"Stable Diffusion, the map ({sd.weights_source})")
for spine in ax.spines.values():
    spine.set_visible(False)
plt.show()

# %% [markdown]
# ### The loop in pictures
#
# At each step the sampler also has an estimate of the final clean latent, $\hat x_0$
# (chapter 5 derives it). The `callback` argument lets us look: decode $x_t$ and $\hat x_0$ at
# a few steps.

# %%
# ~1-9 s on a 2-core CPU: 50 steps, then 12 decodes
frames = {}
keep = [0, 5, 10, 20, 35, 49]


def look(i, t, x_t, pred_x0):  # called by the sampler after every step
    if i in keep:
        frames[i] = (t, np.asarray(x_t), np.asarray(pred_x0))


sd.text_to_image(prompt, seed=0, callback=look)
x_ts = sd.decode(np.concatenate([frames[i][1] for i in keep]))
x0s = sd.decode(np.concatenate([frames[i][2] for i in keep]))
show_images(np.concatenate([x_ts, x0s]),
            [f"x_t, step {i} (t={frames[i][0]})" for i in keep]
            + [f"predicted x_0, step {i}" for i in keep],
            suptitle=f"Decoded x_t (top) and predicted x_0 (bottom) ({sd.weights_source})",
            columns=len(keep), size=1.8)

# %% [markdown]
# The noisy latents $x_t$ decode to coloured blotches until late in the loop (the disc shows
# through from about step 20). The estimate $\hat x_0$ already puts an orange patch in the top
# left at the first step, turns it red over the next 10 to 20 steps, and afterwards only
# rounds and sharpens its edges: the layout is decided in the noisiest steps.
#
# ## How big are the parts?

# %%
parts = {"text encoder": sd.text_encoder, "UNet": sd.unet, "decoder": sd.decoder}
counts = {name: model.count_params() for name, model in parts.items()}
for name, count in counts.items():
    print(f"{name:>12}: {count:>12,} parameters")

fig, ax = plt.subplots(figsize=(6, 2.4))
ax.barh(list(counts)[::-1], list(counts.values())[::-1])
ax.set_title(f"Parameters per network ({sd.model_name} track)")
ax.set_xlabel("parameters")
ax.set_ylabel("network")
plt.show()

# %% [markdown]
# At full size (the sd-v1 track) the same three classes hold 123,060,480 (text encoder),
# 859,520,964 (UNet) and 49,490,199 (decoder) parameters; `tests/test_parity.py` checks those
# counts and that each network computes what KerasCV's computes.
#
# ## Switching to the real Stable Diffusion v1.4
#
# One setting switches every notebook: the environment variable `SDLEARN_TRACK`.
#
# 1. Download the weights once (4.3 GB, checked with SHA-256, into `~/.cache/sdlearn` or
#    `$SDLEARN_CACHE`): `sdlearn download`
# 2. Start Jupyter with the track set: `SDLEARN_TRACK=sd-v1 jupyter lab notebooks/`
#
# `load_pipeline()` then loads SD v1.4 and prints `Track: sd-v1, trained weights`. Images are
# 512 x 512 by default (latent 64 x 64 x 4) and take minutes each on a CPU; use
# `image_size=256` and `num_steps=20` to explore. Prompts are then free text
# ("a photograph of an astronaut riding a horse"). From a shell, without Jupyter:
# `sdlearn generate "a photograph of an astronaut riding a horse" --model sd-v1 -o horse.png`.

# %% tags=["nbval-ignore-output"]
from sdlearn.course import track
from sdlearn.weights import weights_path

print("track in use:", track())
try:  # where the sd-v1 files are, or a clear error saying how to get them
    print("sd-v1 UNet weights:", weights_path("unet"))
except OSError as error:
    print(f"{type(error).__name__}: {error}")

# %% [markdown]
# ## Predict, then run
#
# 1. The same prompt and seed twice: the same pixels? And with `seed=1`?
# 2. `guidance_scale=1.0` ignores the empty-prompt estimate (chapter 5). Will the picture
#    still follow the prompt?
# 3. `image_size=72`: what happens?

# %%
# ~1-7 s on a 2-core CPU: four 20-step generations
a = sd.text_to_image(prompt, seed=0, num_steps=20)
b = sd.text_to_image(prompt, seed=0, num_steps=20)
c = sd.text_to_image(prompt, seed=1, num_steps=20)
d = sd.text_to_image(prompt, seed=0, num_steps=20, guidance_scale=1.0)
print("1. same seed, max pixel difference:", np.abs(a.astype(int) - b).max(),
      "| other seed:", np.abs(a.astype(int) - c).max())
show_images(np.concatenate([a, c, d]), ["seed 0", "seed 1", "seed 0, guidance 1.0"],
            suptitle=f"{prompt!r} ({sd.weights_source})", size=2.4)
try:
    sd.text_to_image(prompt, image_size=72)
except ValueError as error:
    print("3. ValueError:", error)

# %% [markdown]
# (1.) Same seed, same pixels; another seed draws a slightly different disc in the same place
# (its outline moves, so some pixels change by 133 levels). (2.) Here, yes: without guidance
# it is still a red disc in the top left on black. This prompt is an easy one: over many
# prompts guidance matters. `sdlearn evaluate` (chapter 6) finds the shape right on 86% of
# 160 images without guidance against 95% at the default guidance of 3, and every attribute
# at once right on 62.5% against 93%. (3.) Sides must be multiples of 16 on the
# tiny track (8 for the VAE, times 2 for the UNet's one halving; 64 on sd-v1), and the error
# says which sizes would work.
#
# ## Exercises
#
# Replace each `None` with your answer and run the cell; the check says what is wrong and
# gives a hint. Solutions are in the hidden cells.
#
# **Exercise 1.** What is the shape of the initial noise latent for
# `sd.text_to_image(prompt, batch_size=2, image_size=64)`?

# %%
from sdlearn.exercises.ch00_quickstart import (check_context_shape, check_latent_shape,
                                               check_unet_calls)

check_latent_shape(None)  # your answer, a tuple

# %% tags=["hide-cell"]
check_latent_shape((2, 8, 8, 4))

# %% [markdown]
# **Exercise 2.** On the sd-v1 track (CLIP ViT-L/14's text encoder, 768 wide), what is the
# shape of `sd.encode_text(["a cat", "a dog", "a red circle"])`?

# %%
check_context_shape(None)  # your answer, a tuple

# %% tags=["hide-cell"]
check_context_shape((3, 77, 768))

# %% [markdown]
# **Exercise 3.** How many times does `sd.text_to_image(prompt, num_steps=20)` call the UNet
# (with the track's default guidance scale: 3 on tiny, 7.5 on sd-v1)? Predict, then count.

# %%
check_unet_calls(None)  # your answer, a number

# %% tags=["hide-cell"]
calls = []
original = sd.unet_call
sd.unet_call = lambda inputs: calls.append(len(inputs[0])) or original(inputs)
sd.text_to_image(prompt, num_steps=20, seed=0)
sd.unet_call = original
print(f"{len(calls)} calls, each on a batch of {calls[0]} (prompt and empty prompt together)")
check_unet_calls(len(calls))

# %% [markdown]
# **Next:** chapter 1 opens the first box, the tokenizer.
