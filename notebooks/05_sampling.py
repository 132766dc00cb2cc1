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
# # 5. The sampling loop: from noise to an image
#
# Chapters 1-4 built the parts: a prompt becomes a context $c$ of shape `(B, 77, D)`, the UNet
# predicts noise $\epsilon_\theta(x_t, t, c)$, the decoder turns a latent into pixels. This
# chapter opens the loop that ties them together, `sdlearn.sampler`:
#
# 1. the **noise schedule**: how much signal is left at each of the 1000 training timesteps;
# 2. the **forward process**, which the UNet was trained to undo;
# 3. the **DDIM step**, derived line by line and checked against `sampler.ddim_step`;
# 4. **classifier-free guidance** with *one* UNet call per step;
# 5. the loop at work: $x_t$ and the predicted $x_0$ at every step, guidance against steps,
#    seeds, negative prompts, and a second sampler (Euler) side by side.
#
# Everything runs on the track `sdlearn.course.load_pipeline()` announces below (the tiny model
# sdlearn trained on the shapes world, unless `SDLEARN_TRACK=sd-v1` is set). On the tiny track
# one UNet call takes tens of milliseconds, so we can afford hundreds of them.

# %%
# ~6-36 s and ~0.7 GB on a 2-core CPU (importing TensorFlow, building three models)
import logging

import matplotlib.pyplot as plt
import numpy as np

from sdlearn import sampler, shapes
from sdlearn.course import load_pipeline, show_images, show_source

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # no notes on retracing per batch size
sd = load_pipeline(jit_compile=False)  # XLA compiling costs more than it saves here
PROMPT = "a red circle in the top left on a white background"
STEPS = 25  # DDIM steps for most pictures in this chapter (SD's default is 50)
context = sd.encode_text(PROMPT)  # (1, 77, D)
unconditional = sd.encode_text("")  # the empty prompt, for guidance
side = sd.config.image_size // sd.config.vae.downsampling_factor  # 8 pixels per latent pixel
latent_shape = (1, side, side, sd.config.unet.latent_channels)
print("context:", context.shape, " unconditional:", unconditional.shape,
      " latent:", latent_shape)

# %% [markdown]
# ## 1. The noise schedule
#
# Diffusion training takes a clean latent $x_0$ and mixes in Gaussian noise
# $\epsilon \sim \mathcal N(0, I)$ at a level chosen by the timestep $t \in \{0, \dots, 999\}$:
#
# $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon .$$
#
# $\bar\alpha_t$ (written `alpha_t` in the code, `alphas_cumprod` in KerasCV and diffusers) is
# the share of the *variance* that is still signal. It is a running product
# $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$ of the per-step noise variances $\beta_s$, which
# SD v1 chose "scaled linear": $\sqrt{\beta}$ runs linearly from $\sqrt{0.00085}$ to
# $\sqrt{0.012}$. The schedule is not learned; it is four lines:

# %%
show_source(sampler.alphas_cumprod)

# %%
alphas = sampler.ALPHAS_CUMPROD
snr = alphas / (1 - alphas)  # signal-to-noise ratio: signal variance over noise variance
print("alphas_cumprod:", alphas.shape, alphas.dtype)
for t in (0, 250, 500, 750, 999):
    print(f"t = {t:3d}: alpha = {alphas[t]:.4f}, sqrt(alpha) = {np.sqrt(alphas[t]):.4f}, "
          f"SNR = {snr[t]:.3g}")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
t = np.arange(1000)
left.plot(t, alphas, label=r"$\bar\alpha_t$ (signal variance)")
left.plot(t, np.sqrt(alphas), label=r"$\sqrt{\bar\alpha_t}$ (coefficient of $x_0$)")
left.plot(t, np.sqrt(1 - alphas), label=r"$\sqrt{1-\bar\alpha_t}$ (coefficient of $\epsilon$)")
left.set(title="SD v1's scaled-linear schedule", xlabel="timestep t", ylabel="value")
left.legend(fontsize=8)
right.semilogy(t, snr)
right.axhline(1, color="gray", ls="--", lw=1)
right.annotate("SNR = 1: signal and noise equal", (400, 1), (430, 20),
               arrowprops={"arrowstyle": "->"})
right.set(title="Signal-to-noise ratio (log axis)", xlabel="timestep t",
          ylabel=r"SNR $= \bar\alpha_t / (1 - \bar\alpha_t)$")
fig.tight_layout()
plt.show()

# %% [markdown]
# The SNR spans five orders of magnitude, from 1200 at $t = 0$ to 0.005 at $t = 999$; after a
# steep start it falls roughly linearly on the log axis. Noise outweighs signal from a bit more
# than a third of the way on (exercise 1 asks for the exact timestep).
#
# **The schedule never reaches pure noise.** At $t = 999$ the coefficient of $x_0$ is
# $\sqrt{\bar\alpha_{999}} \approx 0.068$: during training the UNet always saw 6.8% of the image
# in its noisiest inputs, yet sampling starts from pure noise, which has none. Lin et al.
# ("Common diffusion noise schedules and sample steps are flawed", WACV 2024) show the result:
# SD v1 cannot make very dark or very bright images, because the overall brightness of the image
# is the part of $x_0$ that leaks through at $t = 999$, and at sampling time it is simply what
# the random noise happens to have. Their fix rescales the schedule to
# $\bar\alpha_{999} = 0$ ("zero terminal SNR") and retrains.

# %%
print(f"sqrt(alpha_999) = {np.sqrt(alphas[999]):.4f}: the share of x_0's amplitude left "
      "at the noisiest training step")

# %% [markdown]
# ## 2. The forward process: noising an image
#
# `sampler.add_noise` is the formula above, for a batch with one $\bar\alpha$ per sample:

# %%
show_source(sampler.add_noise)

# %% [markdown]
# Diffusion itself does not care what $x_0$ is. To *see* the forward process we first apply it
# to the pixels of a shapes-world image (scaled to $[-1, 1]$), then to the image's latent, which
# is what Stable Diffusion actually noises, decoding each noisy latent back to pixels.

# %%
# ~2-12 s on a 2-core CPU (the first calls of the encoder and decoder trace them)
scene = shapes.Scene("large", "red", "circle", "top left", "white")
image = shapes.render(scene)  # (64, 64, 3) uint8
timesteps_shown = np.array([0, 100, 250, 400, 600, 800, 999])
n = len(timesteps_shown)
rng = np.random.default_rng(0)
x0_pixels = np.repeat(image[None].astype("float32") / 127.5 - 1, n, axis=0)  # (7, 64, 64, 3)
noisy_pixels = sampler.add_noise(x0_pixels, rng.standard_normal(x0_pixels.shape),
                                 alphas[timesteps_shown])  # one alpha per image
noisy_pixels = np.clip((np.asarray(noisy_pixels) + 1) * 127.5, 0, 255).astype("uint8")

x0_latent = sd.image_encoder.predict_on_batch(image[None].astype("float32") / 127.5 - 1)
print("image:", image.shape, "-> latent x_0:", x0_latent.shape,
      f"(std {x0_latent.std():.2f}; the latent scale {sd.config.vae.latent_scale:g} makes it "
      "about 1 on average)")
noisy_latents = sampler.add_noise(np.repeat(x0_latent, n, axis=0),
                                  rng.standard_normal((n,) + x0_latent.shape[1:]),
                                  alphas[timesteps_shown])
print("noisy latents:", tuple(noisy_latents.shape))
decoded = np.concatenate([sd.decode(z[None]) for z in np.asarray(noisy_latents)])

show_images(np.concatenate([noisy_pixels, decoded]),
            [f"pixels, t={t}" for t in timesteps_shown] + [f"latent, t={t}" for t in timesteps_shown],
            suptitle=f"The forward process on '{shapes.caption(scene)}': top, noise added to "
                     "the pixels; bottom, to the latent (decoded)", columns=n, size=1.6)

# %% [markdown]
# In pixels the circle is still faintly visible at $t = 600$ and gone from 800 on. In the
# latent, noise destroys the picture much sooner (the circle is a distorted blob at 400 and gone
# at 600): every latent pixel stands for an 8x8 patch, and the decoder
# turns latent noise into large coloured blotches. The UNet's task at each $t$ is the reverse:
# given the bottom row's latents (and $t$, and the prompt), say which noise $\epsilon$ was added.

# %% [markdown]
# ## 3. The DDIM step, derived
#
# Suppose the UNet's answer $\epsilon_\theta = \epsilon_\theta(x_t, t, c)$ were the true noise.
# Then the forward formula can be solved for the clean latent:
#
# $$\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta}{\sqrt{\bar\alpha_t}} .$$
#
# It is not exact (the UNet only estimates $\epsilon$, and worst at high noise), so instead of
# jumping to $\hat x_0$ we take a step to a lower noise level $\bar\alpha_{t'} > \bar\alpha_t$
# (the next timestep $t' < t$ of the sampler) by putting $\hat x_0$ back into the forward
# formula, with the *same* noise:
#
# $$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'}}\,\epsilon_\theta .$$
#
# That is DDIM with $\eta = 0$ (Song et al. 2021, eq. 12). No fresh noise is drawn, so the whole
# sampler is a deterministic function of the starting noise $x_T$: the same seed always gives the
# same image. At the last step $\bar\alpha_{t'} = 1$ and $x_{t'} = \hat x_0$. DDPM, the sampler
# the model was trained with, would add fresh noise at every step and needs ~1000 steps; DDIM
# skips through the timesteps in a few dozen:

# %%
for n_steps in (2, 5, 10, STEPS):
    print(f"{n_steps:2d} steps:", sampler.ddim_timesteps(n_steps).tolist())

# %%
show_source(sampler.ddim_step)

# %% [markdown]
# Now check the derivation numerically. From pure noise, ask the (trained) UNet for
# $\epsilon_\theta$ at $t = 999$, apply the two formulas by hand in float64 numpy, and compare
# with `sampler.ddim_step` (float32 Keras ops).

# %%
# ~1-10 s on a 2-core CPU (the first UNet call traces the model)
timesteps = sampler.ddim_timesteps(STEPS)
t, t_prev = timesteps[0], timesteps[1]
a_t, a_prev = alphas[t], alphas[t_prev]
x_t = np.random.default_rng(1).standard_normal(latent_shape).astype("float32")
eps = sd.unet_call([x_t, np.array([t], "float32"), context])  # (1, h, w, 4), no guidance here
print(f"t = {t} -> t' = {t_prev}: alpha_t = {a_t:.5f}, alpha_t' = {a_prev:.5f}; eps: {eps.shape}")

pred_x0_ours = (x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
x_prev_ours = np.sqrt(a_prev) * pred_x0_ours + np.sqrt(1 - a_prev) * eps
x_prev, pred_x0 = (np.asarray(v) for v in sampler.ddim_step(x_t, eps, a_t, a_prev))
print("x_prev agrees with sampler.ddim_step to 1e-5:",
      np.allclose(x_prev_ours, x_prev, atol=1e-5))
print("pred_x0 agrees with sampler.ddim_step to 1e-4:",
      np.allclose(pred_x0_ours, pred_x0, atol=1e-4))

# %% [markdown]
# (`pred_x0` is divided by $\sqrt{\bar\alpha_{999}} = 0.068$, which magnifies float32 rounding
# 15-fold, hence the looser tolerance.) One more check of the idea: if $\epsilon_\theta$ *is*
# the noise that was added, a DDIM step lands exactly on the forward process at the lower level.
# A perfect noise predictor walks the sampler back along the path training came forward on.

# %%
x0 = x0_latent
true_eps = np.random.default_rng(2).standard_normal(x0.shape).astype("float32")
x_t = sampler.add_noise(x0, true_eps, a_t)
x_prev, pred_x0 = sampler.ddim_step(x_t, true_eps, a_t, a_prev)
print("pred_x0 == x_0:", np.allclose(pred_x0, x0, atol=1e-4))
print("x_prev == add_noise(x_0, eps, alpha_t'):",
      np.allclose(x_prev, sampler.add_noise(x0, true_eps, a_prev), atol=1e-5))

# %% [markdown]
# ## 4. Classifier-free guidance: one UNet call of batch 2B
#
# A UNet trained with the prompt sometimes dropped (replaced by the empty prompt) can predict
# noise both with and without the prompt. Guidance (Ho & Salimans 2022) extrapolates from the
# unconditional prediction past the conditional one:
#
# $$\tilde\epsilon = \epsilon_\theta(x_t, t, \varnothing)
#    + s\,\big(\epsilon_\theta(x_t, t, c) - \epsilon_\theta(x_t, t, \varnothing)\big).$$
#
# $s = 1$ is the conditional prediction, $s = 0$ ignores the prompt, and $s > 1$ exaggerates
# whatever the prompt changes: SD's default is 7.5; the tiny track's is 3
# (`sd.config.guidance_scale`), which measured best on its shapes (`sdlearn evaluate`, on
# training captions: 93% of the images right in colour, shape, position, background and size
# at once, against 86% at 5 and 62.5% at 1, no guidance). Both predictions come from one UNet
# call on a batch of $2B$, rows `[unconditional; conditional]`; KerasCV makes two calls of
# batch $B$ instead.
# The sampler skips the unconditional half when $s = 1$.

# %%
show_source(sampler.guided_noise)


# %% [markdown]
# The sampler takes any function as its UNet, so we can hand it one that counts its calls and
# records the batch size of each, around the pipeline's own `sd.unet_call`:

# %%
# ~3-17 s on a 2-core CPU (20 UNet calls; the first at each batch size traces the model)
class CountingUNet:
    """Wraps a UNet function; remembers the shape of the latent batch of every call."""

    def __init__(self, unet_call):
        self.unet_call, self.batches = unet_call, []

    def __call__(self, inputs):
        self.batches.append(tuple(inputs[0].shape))
        return self.unet_call(inputs)


noise = np.random.default_rng(0).standard_normal(latent_shape).astype("float32")
for scale in (sd.config.guidance_scale, 1.0):
    counter = CountingUNet(sd.unet_call)
    sampler.sample(counter, noise, context, unconditional, num_steps=10, guidance_scale=scale)
    print(f"guidance_scale {scale}: {len(counter.batches)} UNet calls for 10 steps, "
          f"latent batches {sorted(set(counter.batches))}")

# %% [markdown]
# Ten steps, ten calls either way; guidance doubles the *batch*, not the number of calls.
# On an accelerator a batch of 2 costs far less than two calls of 1 (chapter 8 measures it).

# %% [markdown]
# ## 5. Watching the loop: $x_t$ and the predicted $x_0$ at every step
#
# `sd.text_to_image(..., callback=f)` calls `f(i, t, x_t, pred_x0)` after every step $i$, with
# the latent the step started from and its estimate $\hat x_0$ of the clean latent. We keep
# them all and decode them with the pipeline's decoder.
#
# The callback is also a place for **invariants**. For two years the fast.ai "Stable Diffusion
# Deep Dive" notebook called its scheduler's `step` twice per loop iteration, silently skipping
# half the noise levels, and the images still looked fine. Two assertions would have caught it:
# the callback must see each timestep exactly once, noisiest first; and each step's $x_t$ must
# be the DDIM step of the previous one. The second needs no access to the UNet: from $x_t$ and
# $\hat x_0$ the callback can recover the $\epsilon$ that was used,
# $\epsilon = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0) / \sqrt{1 - \bar\alpha_t}$, and redo the step.

# %%
records = []
final = sd.text_to_image(PROMPT, num_steps=10, seed=0,
                         callback=lambda i, t, x_t, x0: records.append((i, t, np.asarray(x_t),
                                                                        np.asarray(x0))))
steps_seen = [i for i, _, _, _ in records]
timesteps_seen = [t for _, t, _, _ in records]
print("steps seen:    ", steps_seen)
print("timesteps seen:", timesteps_seen)
assert timesteps_seen == sampler.ddim_timesteps(10).tolist(), "each timestep exactly once"
assert all(a > b for a, b in zip(timesteps_seen, timesteps_seen[1:])), "strictly decreasing"

for (i, t, x_t, x0), (_, t_next, x_next, _) in zip(records, records[1:]):
    eps = (x_t - np.sqrt(alphas[t]) * x0) / np.sqrt(1 - alphas[t])
    expected = np.sqrt(alphas[t_next]) * x0 + np.sqrt(1 - alphas[t_next]) * eps
    assert np.allclose(x_next, expected, atol=1e-3), f"step {i} was not one DDIM step"
print("invariants hold: 10 steps, each timestep once in decreasing order, each x_t one "
      "DDIM step from the last")

# %%
# ~2-8 s on a 2-core CPU (decoding at two new batch sizes traces the decoder twice)
x_ts = np.concatenate([x_t for _, _, x_t, _ in records])  # (10, h, w, 4)
x0s = np.concatenate([x0 for _, _, _, x0 in records])
print("latents per step:", x_ts.shape, " predicted x0 per step:", x0s.shape)
frames = np.concatenate([sd.decode(x_ts), sd.decode(x0s)])
show_images(frames, [f"x_t, t={t}" for t in timesteps_seen] +
            [f"pred x0, t={t}" for t in timesteps_seen],
            suptitle=f"10 DDIM steps for '{PROMPT}': the latent x_t each step starts from "
                     "(top) and its predicted x0 (bottom), decoded", columns=10, size=1.4)
print("the image the pipeline returned is the last predicted x0, decoded (to 1 of 255 levels):",
      np.abs(final[0].astype(int) - frames[-1]).max() <= 1)

# %% [markdown]
# Read the bottom row first: after the very first step, from almost pure noise, the UNet's guess
# already has a red blob in the top left, on a pale yellowish background; one step later
# ($t = 888$) it is a red disc on white, and the later steps only sharpen it (a faint green
# speck below the disc stays to the end). The top row is what the sampler actually carries
# between steps: the predicted image plus a shrinking amount of the same noise, in which the
# red disc emerges from $t = 777$ on. (This starting noise makes the position easy: the first
# "predict" cell below shows that from seed 0 even the empty prompt puts a circle in the top
# left.)

# %% [markdown]
# ## 6. Guidance scale against number of steps
#
# Same prompt, same starting noise; each picture is one run of the sampler. We read each result
# back with `shapes.analyse`, the shapes world's reader: no learned parts, just pixel statistics
# (border colour, the mask of pixels that differ from it, the mask's colour, centroid and
# moments), so it reports the colour, shape and position a picture shows.

# %%
# ~4-12 s on a 2-core CPU (20 images, 230 UNet calls)
scales = (1.0, 3.0, 5.0, 7.5, 15.0)
step_counts = (3, 6, 12, 25)
grid = {}
for s in scales:
    for n_steps in step_counts:
        grid[s, n_steps] = sd.text_to_image(PROMPT, num_steps=n_steps, guidance_scale=s,
                                            seed=0)[0]


def describe(image):
    """What the analyser reads in an image, in a few words."""
    read = shapes.analyse(image)
    return " ".join(str(v) for v in (read.colour, read.shape, read.position) if v) or "nothing"


fig, axes = plt.subplots(len(scales), len(step_counts), figsize=(8, 10.6))
for r, s in enumerate(scales):
    for c, n_steps in enumerate(step_counts):
        ax = axes[r, c]
        ax.imshow(grid[s, n_steps])
        ax.set_title(describe(grid[s, n_steps]), fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
        if c == 0:
            ax.set_ylabel(f"guidance s = {s:g}")
        if r == len(scales) - 1:
            ax.set_xlabel(f"{n_steps} steps")
fig.suptitle(f"'{PROMPT}', seed 0\nrows: guidance scale; columns: DDIM steps; "
             "titles: what shapes.analyse reads")
fig.tight_layout()
plt.show()

# %% [markdown]
# What the grid shows, for this prompt and seed: all 20 pictures read as a red circle in the
# top left, as asked. What guidance changes is the rest of the picture. At $s$ = 1 and 3 even
# 3 steps give a clean disc on white. Stronger guidance with few steps leaves a blotchy
# background: yellowish at 3 steps and $s \ge 5$, still gray-green at $s = 15$ after 25
# steps, where the disc also turns pinker and runs downwards. More guidance needs more steps,
# and on this model it buys nothing here that $s = 3$ does not already give.
#
# ## 7. Seeds
#
# The only randomness in generation is the starting noise $x_T$, drawn from `seed` with numpy's
# generator, and DDIM adds none. So one seed gives one image, bit for bit, and other seeds give
# other samples of the same prompt.

# %%
a = sd.text_to_image(PROMPT, num_steps=STEPS, seed=42)
b = sd.text_to_image(PROMPT, num_steps=STEPS, seed=42)
print("seed 42 twice, identical images:", np.array_equal(a, b))

# %%
# ~1-4 s on a 2-core CPU (batch 6 is new: the UNet and the decoder are traced again)
prompt = "a large triangle"  # colour, position and background left to the model
seeds = range(6)
# One batch of six, each noise drawn from its own seed exactly as `seed=s` would draw it.
noises = np.concatenate([np.random.default_rng(s).standard_normal(latent_shape) for s in seeds])
print("noises:", noises.shape)
images = sd.text_to_image(prompt, batch_size=len(seeds), num_steps=STEPS, noise=noises)
show_images(images, [f"seed {s}: {describe(im)}" for s, im in zip(seeds, images)],
            suptitle=f"'{prompt}' with six seeds ({STEPS} DDIM steps, guidance "
                     f"{sd.config.guidance_scale:g})", size=1.8)

# %% [markdown]
# Left free to choose, the tiny model draws a triangle from all six seeds, and picks the rest
# itself: yellow or orange mostly (one blue, seed 4), on white, black or gray, in different
# places. The analyser reads only three of them as triangles: under the triangles of seeds 0
# and 3 sits a blue or green bar, which spoils the moments it reads the shape from ("circle"),
# and seed 4's blue triangle is blurred into an orange smear beside it ("square").
#
# ## 8. Negative prompts
#
# The unconditional half of guidance does not have to be the empty prompt. With a negative
# prompt $n$ in its place,
# $\tilde\epsilon = \epsilon_\theta(x_t, t, n) + s\,(\epsilon_\theta(x_t, t, c) -
# \epsilon_\theta(x_t, t, n))$ pushes *away* from $n$ as well as towards $c$. In the shapes
# world we can count what it does: leave the colour open, forbid red, and read the colours back.

# %%
# ~2-12 s on a 2-core CPU (16 images, 50 UNet calls of batch 16)
prompt, negative = "a large circle on a black background", "a red circle"
without = sd.text_to_image(prompt, batch_size=8, num_steps=STEPS, seed=0)  # 8 noises
with_negative = sd.text_to_image(prompt, negative_prompt=negative, batch_size=8,
                                 num_steps=STEPS, seed=0)  # the same 8 noises
for name, batch in (("no negative prompt", without), (f"negative '{negative}'", with_negative)):
    reads = [shapes.analyse(im) for im in batch]
    print(f"{name:26}: {[read.colour for read in reads]}")
    print(f"{'':26}  {[read.shape for read in reads]}")
show_images(np.concatenate([without, with_negative]),
            [f"sample {i}" for i in range(8)] + [f"sample {i}, neg." for i in range(8)],
            suptitle=f"'{prompt}': without (top) and with (bottom) the negative prompt "
                     f"'{negative}'", columns=8, size=1.4)

# %% [markdown]
# The count is clear. Left to choose the colour, the tiny model makes 7 of the 8 circles red
# (and the eighth orange). With "a red circle" as the negative prompt, none of the 8 is red:
# 5 are blue and 3 yellow, from the same 8 noises, and every one is still a circle on black,
# as the prompt asks. The negative prompt pushed the samples away from red without
# undoing the rest of the prompt. (The red ones are a little angular, rounded octagons more
# than discs; the analyser still reads all 16 pictures as circles.) Exercise for the curious:
# try other negative prompts, and count.
#
# ## 9. A second sampler: Euler on Karras noise levels
#
# Divide the forward formula by $\sqrt{\bar\alpha_t}$ and it reads
# $\bar x = x_t / \sqrt{\bar\alpha_t} = x_0 + \sigma\,\epsilon$ with the noise level
# $\sigma = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$. Karras et al. (2022) sample by solving the
# probability-flow ODE $d\bar x / d\sigma = (\bar x - \hat x_0) / \sigma = \epsilon_\theta$ from
# $\sigma_{\max}$ down to 0. One Euler step is
# $\bar x_{\sigma'} = \bar x_\sigma + (\sigma' - \sigma)\,\epsilon_\theta$:

# %%
show_source(sampler.euler_step)

# %% [markdown]
# Multiply out: $\sqrt{\bar\alpha_{t'}}\,(\bar x + (\sigma' - \sigma)\epsilon) =
# \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{\bar\alpha_{t'}}\,\sigma'\epsilon =
# \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'}}\,\epsilon$, the DDIM step.
# **DDIM is Euler's method** for this ODE; numerically:

# %%
x_t = np.random.default_rng(3).standard_normal(latent_shape).astype("float32")
eps = np.random.default_rng(4).standard_normal(latent_shape).astype("float32")
for t, t_prev in ((999, 959), (500, 480), (40, 0)):
    ddim_x, _ = sampler.ddim_step(x_t, eps, alphas[t], alphas[t_prev])
    euler_x, _ = sampler.euler_step(x_t, eps, alphas[t], alphas[t_prev])
    print(f"t = {t:3d} -> {t_prev:3d}: Euler step == DDIM step (to 1e-5):",
          np.allclose(ddim_x, euler_x, atol=1e-5))

# %% [markdown]
# So what makes "Euler Karras" a different sampler is only *where* it steps: evenly in
# $\sigma^{1/\rho}$ with $\rho = 7$, which puts many more steps at low noise, where the details
# form, than DDIM's even spacing in $t$.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
for name, ts in (("DDIM", sampler.ddim_timesteps(10)), ("Euler-Karras, rho = 7",
                                                        sampler.karras_timesteps(10))):
    a = sampler.alpha_at(ts)
    left.plot(range(10), ts, "o-", label=name)
    right.semilogy(range(10), np.sqrt((1 - a) / a), "o-", label=name)
left.set(title="Timesteps of a 10-step sampler", xlabel="step i", ylabel="timestep t")
right.set(title="Noise levels of a 10-step sampler (log axis)", xlabel="step i",
          ylabel=r"$\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$")
left.legend(), right.legend()
fig.tight_layout()
plt.show()

# %%
# ~2-6 s on a 2-core CPU (6 images, 80 UNet calls)
noise = np.random.default_rng(7).standard_normal(latent_shape).astype("float32")
comparison, titles = [], []
for name, sample in (("DDIM", sampler.sample), ("Euler", sampler.sample_euler)):
    for n_steps in (5, 10, STEPS):
        latent = sample(sd.unet_call, noise, context, unconditional, num_steps=n_steps,
                        guidance_scale=sd.config.guidance_scale)
        comparison.append(sd.decode(latent)[0])
        titles.append(f"{name}, {n_steps} steps")
show_images(np.stack(comparison), titles, columns=3, size=1.8,
            suptitle=f"DDIM (top) and Euler-Karras (bottom) from the same noise, '{PROMPT}'")

# %% [markdown]
# From this noise both samplers draw the same red circle in the top left, already at 5 steps,
# and the six pictures are hard to tell apart. On this small model the two step rules, which
# only place their steps differently, give pictures that differ in details only.
#
# ## Predict, then run
#
# Write down your prediction before running each cell.
#
# 1. With `guidance_scale=0`, the prompt enters only through the conditional half, which gets
#    weight 0. What will a "red circle" prompt produce?

# %%
zero_guidance = sd.text_to_image(PROMPT, num_steps=STEPS, guidance_scale=0.0, seed=0)
print("guidance 0 reads as:", describe(zero_guidance[0]))
empty_prompt = sd.text_to_image("", num_steps=STEPS, guidance_scale=1.0, seed=0)
print("the empty prompt's image, to within 2 of 255 levels:",
      np.abs(zero_guidance.astype(int) - empty_prompt).max() <= 2)

# %% [markdown]
# Guidance 0 gives the empty prompt's image (the same prediction; the two calls differ only by
# float rounding, a batch of 2 against a batch of 1), and it is not what the prompt asks for:
# from seed 0 the empty prompt draws a *purple* circle in the top left (on black, not white).
# The top-left position is this starting noise's own choice; the red colour and the white
# background of the pictures above came from the prompt, through guidance.
#
# 2. `ddim_timesteps(1)` is `[0]`: a single step at $t = 0$, where the UNet expects an almost
#    clean latent. What comes out of a one-step sampler started from pure noise?

# %%
one_step = sd.text_to_image(PROMPT, num_steps=1, seed=0)
print("1 step reads as:", describe(one_step[0]),
      "| pixel std:", round(float(one_step.std()), 1))

# %% [markdown]
# One step at $t = 0$ divides by $\sqrt{\bar\alpha_0} = 0.9996$ and removes $\sqrt{1 - \bar\alpha_0}
# = 0.03$ of a noise estimate: the result is (almost) the starting noise, decoded, blotches like
# the first frame of the filmstrip's top row. The analyser still finds some "shape" in it.
#
# 3. Multiply the starting noise by 0.5. The model expects $x_{999}$ with standard deviation 1.
#    Does the picture get calmer, or does it fall apart?

# %%
noise = np.random.default_rng(0).standard_normal(latent_shape).astype("float32")
weak = sd.text_to_image(PROMPT, num_steps=STEPS, noise=0.5 * noise)
strong = sd.text_to_image(PROMPT, num_steps=STEPS, noise=noise)
print("noise x 1 reads as:", describe(strong[0]), "| noise x 0.5:", describe(weak[0]))
show_images(np.concatenate([strong, weak]), ["noise x 1", "noise x 0.5"], size=1.8,
            suptitle="The same noise at its proper scale and at half of it")

# %% [markdown]
# It does not fall apart here: half the noise still gives a clean red disc in the top left,
# almost the same picture (the faint green speck under the disc is gone). The sampler is a
# deterministic map from $x_T$ to an image, and scaling $x_T$ could move it to another
# picture; with this noise and the tiny model, the prompt decides nearly everything anyway.
#
# ## Exercises
#
# Each exercise has a `check_*` function that says what is wrong and gives a hint. Replace the
# placeholder with your answer and run the cell; the hidden cell after it holds a solution.
#
# **Exercise 1.** Find the first timestep $t$ at which noise outweighs signal, i.e. the SNR
# $\bar\alpha_t / (1 - \bar\alpha_t)$ drops below 1. Use `sampler.ALPHAS_CUMPROD`.

# %%
from sdlearn.exercises.ch05_sampling import (check_ddim_step, check_guidance,
                                             check_snr_crossing, check_timesteps_seen)

check_snr_crossing(None)  # your answer: an integer timestep

# %% tags=["hide-cell"]
check_snr_crossing(int(np.argmax(snr < 1)))


# %% [markdown]
# **Exercise 2.** Write the DDIM step with numpy only: `my_ddim_step(x_t, eps, alpha_t,
# alpha_prev)` returns $x_{t'}$ (not $\hat x_0$).

# %%
def my_ddim_step(x_t, eps, alpha_t, alpha_prev):
    return x_t  # your code here


check_ddim_step(my_ddim_step)


# %% tags=["hide-cell"]
def my_ddim_step(x_t, eps, alpha_t, alpha_prev):
    pred_x0 = (x_t - np.sqrt(1 - alpha_t) * eps) / np.sqrt(alpha_t)
    return np.sqrt(alpha_prev) * pred_x0 + np.sqrt(1 - alpha_prev) * eps


check_ddim_step(my_ddim_step)


# %% [markdown]
# **Exercise 3.** Write classifier-free guidance: `my_guidance(eps_unconditional,
# eps_conditional, guidance_scale)` returns the guided noise.

# %%
def my_guidance(eps_unconditional, eps_conditional, guidance_scale):
    return eps_conditional  # your code here


check_guidance(my_guidance)


# %% tags=["hide-cell"]
def my_guidance(eps_unconditional, eps_conditional, guidance_scale):
    return eps_unconditional + guidance_scale * (eps_conditional - eps_unconditional)


check_guidance(my_guidance)

# %% [markdown]
# **Exercise 4.** Write a callback that records the timestep of every step, run
# `sd.text_to_image(PROMPT, num_steps=8, seed=0, callback=...)` with it, and check the list.

# %%
seen = []  # your callback should append to this list
check_timesteps_seen(seen)

# %% tags=["hide-cell"]
seen = []
sd.text_to_image(PROMPT, num_steps=8, seed=0, callback=lambda i, t, x_t, x0: seen.append(t))
check_timesteps_seen(seen)

# %% [markdown]
# **Next:** chapter 6 trains the tiny model that made these pictures, from scratch.
