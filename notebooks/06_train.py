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
# # 6. Train it yourself
#
# The tiny track's model was trained by sdlearn itself, from scratch, on the synthetic shapes
# world, in the order Stable Diffusion was made:
#
# 1. the **autoencoder**: encoder and decoder, L1 reconstruction plus a small KL term,
#    $\mathcal{L} = \lVert D(z) - x \rVert_1 + \beta\, \mathrm{KL}(q(z|x) \,\|\, \mathcal{N}(0, I))$,
#    then the latent scale measured as $1 / \mathrm{std}(z)$ (SD's 0.18215 came from the same
#    measurement);
# 2. the **text encoder**, as half of a tiny CLIP: contrastive loss between image and caption
#    vectors (the image tower is thrown away afterwards);
# 3. the **UNet**, on frozen latents and frozen text: DDPM's loss
#    $\lVert \epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon,
#    t, c) \rVert^2$, with the caption dropped 10% of the time so that classifier-free guidance
#    works.
#
# This chapter reads the training code, runs it in its QUICK mode (20 steps per stage: every
# code path, in 40-125 s on an idle 2-core CPU, but far too few steps to learn to
# draw), then looks at the shipped model that the FULL plan produced: its numbers, its
# pictures, and its measured prompt adherence.

# %%
# ~3-8 s and ~650 MB on a 2-core CPU: importing TensorFlow (through sdlearn)
import json
import logging

import matplotlib.pyplot as plt
import numpy as np

from sdlearn import evaluate, shapes, train
from sdlearn.course import show_images, show_source

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # no retracing notes from predict
print(train.__doc__)

# %% [markdown]
# ## The plans: how long each stage trains
#
# A plan is data: a `TrainingPlan` with one `StageSettings` per stage. FULL made the shipped
# weights; QUICK runs the same code for a few steps.

# %%
for name, plan in (("FULL", train.FULL), ("QUICK", train.QUICK)):
    print(name, f"{plan.num_images:,} training images")
    for stage in train.STAGES:
        s = plan.stage(stage)
        print(f"  {stage:>12}: {s.steps:>5} steps x batch {s.batch_size:>3} = "
              f"{s.steps * s.batch_size:>7,} examples, lr {s.learning_rate:g}")

# %% [markdown]
# ## The data
#
# Every training image is drawn by `sdlearn.shapes` from a seed: one filled shape on a plain
# background, with a caption that leaves out size, position or background 30% of the time
# each. Eight (colour, shape, position) combinations are never shown in training: they test
# whether the model can compose words it learned separately.

# %%
images, captions, scenes = shapes.make_dataset(8, seed=0)
show_images(images, [c.replace(" in the", "\nin the").replace(" on a", "\non a")
                     for c in captions], suptitle="Training images and their captions",
            columns=8, size=1.8)
print("held out of training:", sorted(" ".join(t) for t in shapes.HELD_OUT))

# %% [markdown]
# ## The three losses
#
# Each stage is a small `keras.Model` (a "trainer") whose `call` runs the models and whose
# `compute_loss` says what to minimise; `model.fit` does the rest. The autoencoder's loss, with
# extra weight on the shape and its outline (`shape_weights`):

# %%
show_source(train.AutoencoderTrainer.compute_loss)

# %% [markdown]
# CLIP's loss: image $i$ belongs with caption $i$, so the $(B, B)$ matrix of similarities is
# scored with a cross-entropy along each row (which caption?) and each column (which image?).
# (Training feeds it only the first 14 of the 77 token positions, up to the longest caption's
# end token: attention is causal, so the end token's vector never sees the padding after it,
# and a step on the shorter input takes half the time: 259 ms instead of 533 on 2 cores,
# the image tower's share being the same.)

# %%
show_source(train.CLIPTrainer)

# %% [markdown]
# And the UNet's: noise a latent to a random level $t$, predict the noise back.

# %%
show_source(train.DiffusionTrainer)

# %% [markdown]
# ## A QUICK run, from scratch
#
# `train.run(quick=True)` draws the data, trains the three stages in order, and writes the
# four weight files with a `manifest.json`, exactly as the full run does. A small Keras
# callback records the loss after every step (the mean so far in the current epoch, as
# Keras reports it).

# %%
# ~40-125 s on an idle 2-core CPU (autoencoder 11-31 s, CLIP 4-11 s, UNet 26-67 s), ~250 s when
# shared with other jobs; ~2.3 GB peak memory (printed below): three stages of 20 steps each,
# most of the time spent tracing each stage's training step into a TensorFlow graph
import shutil
import tempfile
import time
from pathlib import Path

import keras


class StepLosses(keras.callbacks.Callback):
    """The running loss after every training step, one list per stage."""

    def __init__(self):
        super().__init__()
        self.stages = []

    def on_train_begin(self, logs=None):
        self.stages.append([])

    def on_train_batch_end(self, batch, logs=None):
        self.stages[-1].append(float(logs["loss"]))


folder = Path(tempfile.gettempdir()) / "sdlearn-quick-run"  # a fresh run every time
shutil.rmtree(folder, ignore_errors=True)
step_losses = StepLosses()
start = time.perf_counter()
summary = train.run(quick=True, output_dir=folder / "out", checkpoint_dir=folder / "ckpt",
                    verbose=0, callbacks=[step_losses])
quick_seconds = time.perf_counter() - start

# %% tags=["nbval-ignore-output"]
import resource

print(f"QUICK run: {quick_seconds:.0f} s in all; per stage: "
      + ", ".join(f"{name} {result['seconds']:.0f} s"
                  for name, result in summary["stages"].items())
      + f"; peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")

# %%
for stage, losses in zip(train.STAGES, step_losses.stages):
    print(f"{stage:>12}: loss after step 1: {losses[0]:.2g}, after step {len(losses)}: "
          f"{losses[-1]:.2g}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, stage, losses in zip(axes, train.STAGES, step_losses.stages):
    ax.plot(np.arange(1, len(losses) + 1), losses, marker=".")
    ax.set_title(f"{stage} (QUICK run)")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (running mean in the epoch)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Keras reports the mean loss since the start of the epoch, so the autoencoder's and CLIP's
# curves drop at step 11, where the second epoch's mean starts afresh. Every code path ran:
# data, three trainers, checkpoints, CSV logs, the latent scale, the manifest. Twenty steps
# teach almost nothing, though: the tiny CLIP's second epoch sits near ln 32 = 3.47, the loss
# of guessing among the 32 captions of a batch.
#
# The QUICK run is reproducible: every batch is drawn from a seed of its own and the batches
# come in a fixed order, so running this notebook twice printed the same losses and the same
# latent scale (0.7226) both times. Only its times and memory vary with the machine; that
# cell is the only one in this chapter whose output is not compared in testing.
#
# ## The shipped model: how it was trained
#
# The manifest that ships with the weights records the run that made them: the data, each
# stage's settings, time and final losses.

# %%
manifest = train.tiny_manifest()
training = manifest["training"]
print({k: v for k, v in training.items() if k != "stages"})
print("latent scale:", manifest["latent_scale"])
for stage, result in training["stages"].items():
    s = result["settings"]
    print(f"{stage:>12}: {s['steps']} steps x batch {s['batch_size']}, "
          f"{result['seconds'] / 60:.1f} min (its last session); final "
          + ", ".join(f"{k} {v:.3g}" for k, v in result.items()
                      if k not in ("settings", "seconds")))

# %% [markdown]
# The seconds in the manifest are those of the session that finished each stage. The UNet's
# 3.2 min is not what it cost: the shipped run was interrupted during the UNet stage and
# continued with `sdlearn train --resume`, and the manifest timed only the resumed part.
#
# ## The shipped run's loss curves
#
# The shipped model comes with the CSV log of each stage: one row per "epoch" (a checkpoint
# every 100, 50 and 200 steps), with the mean loss over that epoch and the seconds since the
# stage started, or since it was resumed: where the seconds go down, a new session began.

# %%
import csv

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, stage in zip(axes, train.STAGES):
    with open(train.SHIPPED_DIR / f"{stage}_log.csv") as f:
        rows = list(csv.DictReader(f))
    per_epoch = training["stages"][stage]["settings"]["steps_per_epoch"]
    steps = [(int(r["epoch"]) + 1) * per_epoch for r in rows]
    losses = [float(r["loss"]) for r in rows]
    ax.plot(steps, losses, marker="o")
    ax.set_yscale("log")
    ax.set_title(f"{stage} (shipped FULL run)")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean loss over the epoch (log scale)")
    seconds = [float(r["seconds"]) for r in rows]
    resumed = [i for i in range(1, len(rows)) if seconds[i] < seconds[i - 1]]  # clock restarts
    sessions = [seconds[i - 1] for i in resumed] + [seconds[-1]]  # each session's time
    print(f"{stage:>12}: {len(rows)} epochs, loss {losses[0]:.3g} -> {losses[-1]:.3g}, "
          f"{sum(sessions) / 60:.1f} min"
          + "".join(f"; resumed at epoch {i + 1}: {sessions[k] / 60:.1f} min before, "
                    f"{sessions[k + 1] / 60:.1f} min after" for k, i in enumerate(resumed)))
fig.tight_layout()
plt.show()

# %% [markdown]
# CLIP now trains for 750 steps (250 before, when the tiny text encoder hardly told "circle"
# from "square"); its loss flattens after about 450 of them. The UNet's 19.5 min overstate an
# uninterrupted run: the resumed session's 2.2 min for its last epoch include about 75 s of
# compiling the training step with XLA again. At the pace of the epochs before it (~53 s),
# the UNet stage takes about 1,090 s (18 min) without the interruption, and the whole FULL
# run about 30 min on this course's 2-core CPU: 6 s of data, 7 min autoencoder, 4.4 min CLIP,
# 18 min UNet. The project's target was 20 min; this run does not meet it. The machine, not
# the plan, made it slow: the same `sdlearn train` on an idle 2-core machine of a newer
# processor (AMD Zen 5, 2026-12-02) took 8 min 19 s in all (autoencoder 131 s, CLIP 69 s,
# UNet 291 s). Its weights are close to the shipped ones but not bit-identical (CPU kernels
# round differently on different processors: its first autoencoder loss is 0.4612 against
# 0.4623 here), and they meet the same prompt-adherence targets (the README has its numbers).
#
# ## The shipped model's measured prompt adherence
#
# `sdlearn.evaluate` generates an image for each of a set of fully specified captions and
# reads it back with `shapes.analyse`, a fixed analyser with no learned parts: is the shape
# the colour, shape, size, position and background that the caption asks for? Half the
# captions are "seen" (colour, shape, position) combinations, half are held out of training.

# %%
# ~8-25 s on an idle 2-core CPU, ~60 s shared with other jobs: building the shipped model, then
# 48 images with 25 guided DDIM steps. Plain graphs, not XLA: compiling would cost more than
# it saves on 48 images (`sdlearn evaluate` compiles; both draw the same images to a pixel
# level or two, a test checks it)
guidance = evaluate.DEFAULT_GUIDANCE  # 3 for the tiny model (sdlearn/config.py says why)
shipped_model = evaluate.TinyModel(jit_compile=False)  # the shipped weights, SHA-256 checked
result = evaluate.evaluate(shipped_model, num_seen=24, num_held_out=24,
                           guidance_scales=(guidance,), num_steps=25)
print(evaluate.markdown_table(result, {"seen": 24, "held-out": 24}))

# %% [markdown]
# Twelve of those images, the first six of each group:

# %%
scenes = evaluate.evaluation_scenes(24, 24)
pictures = np.concatenate([result["images"][guidance]["seen"][:6],
                           result["images"][guidance]["held-out"][:6]])
names = [shapes.caption(s).replace("a ", "", 1).replace(" in the", "\nin the")
         .replace(" on a", "\non a") for s in scenes["seen"][:6] + scenes["held-out"][:6]]
titles = [f"seen: {n}" for n in names[:6]] + [f"held out: {n}" for n in names[6:]]
show_images(pictures, titles, columns=6, size=2.5,
            suptitle=f"The shipped model on seen captions (top) and held-out captions (bottom); "
                     f"guidance {guidance:g}")

# %% [markdown]
# (25 DDIM steps here, half of `sdlearn evaluate`'s 50, to save time: on these 48 captions
# both give the same table.) On these 24 + 24 captions at guidance 3 the shipped model got the colour and the background
# right on every image, and the shape on 23 of the 24 seen captions (95.8%) and 22 of the 24
# held-out ones (91.7%); all five attributes at once were right on 91.7% of the seen images
# and 87.5% of the held-out ones. With 24 images per group one image is about 4 points, so
# these are rough numbers; `sdlearn evaluate` measures 256 images per scale and finds 93.1%
# (seen) and 91.7% (held-out) right in everything at guidance 3, shape 95.0% and 93.8%:
# the held-out combinations, never seen in training, come out almost as well as the seen ones.
#
# The pictures show what the numbers mean. Circles, squares and triangles are told apart:
# the previous model's text encoder, trained a third as long, barely separated "circle" from
# "square" and drew rounded blobs for both. Eleven of the twelve shipped pictures have the
# asked-for shape, colour, place and background; the small purple square in the top left (top
# row, right) comes out as a round blob. What remains is softness: squares have rounded
# corners, edges are blurred, and some shapes carry a faint halo or shadow (the light ring
# around the orange and red circles, the dark band under the yellow square, a dark stripe
# across the small red square).
#
# The QUICK model can draw too: `evaluate.TinyModel(folder / "out")` loads any training
# output, with its own latent scale from its manifest, and `.generate(captions, seeds)` draws
# with it. This notebook leaves that out to stay within its time budget; when earlier
# versions of this chapter drew them, the QUICK model's pictures were coloured noise: same
# code, 20 steps instead of thousands.
#
# ## The full run, on your machine
#
# `sdlearn train --output my-tiny` trains the three stages with the FULL plan (the shipped
# run's times are in the manifest above), writes checkpoints and a CSV log per stage in
# `sdlearn-tiny-checkpoints/`, and the four weight files with their `manifest.json` to
# `my-tiny/`. An interrupted run continues with `--resume`; `--stage unet --steps 500`
# retrains only the UNet on the shipped autoencoder and text encoder. Then
# `sdlearn evaluate --weights my-tiny` measures your model as above, and
# `evaluate.TinyModel("my-tiny").generate(prompts, seeds)` draws with it (it reads your run's
# latent scale from its manifest).
#
# ## Predict, then run
#
# 1. Caption dropout trains the UNet on the empty prompt 10% of the time. Without it, what
#    would classifier-free guidance compute for $\epsilon_\theta(x_t, t, \varnothing)$?
# 2. The QUICK autoencoder trained for 20 steps. Is its latent scale near the shipped one?

# %%
print("latent scale, QUICK:", summary["stages"]["autoencoder"]["latent_scale"],
      "| shipped:", manifest["latent_scale"])

# %% [markdown]
# ## Exercises
#
# Replace each `None` with your answer and run the cell; the check says what is wrong and
# gives a hint. Solutions are in the hidden cells.
#
# **Exercise 1.** Write `latent_scale(latents)`: the number that, multiplied into the
# latents, gives them unit variance (how SD's 0.18215 and our scale were measured).

# %%
from sdlearn.exercises.ch06_train import (check_clip_loss, check_images_seen,
                                          check_latent_scale, check_noisy_latent)


def latent_scale(latents):
    return None  # your code here


check_latent_scale(latent_scale)

# %% tags=["hide-cell"]
check_latent_scale(lambda latents: 1 / np.std(latents))


# %% [markdown]
# **Exercise 2.** Write `make_noisy(x0, noise, alpha)`: the forward process's $x_t$ for a
# clean latent `x0`, Gaussian `noise` and $\bar\alpha_t$ = `alpha` (what
# `DiffusionTrainer.call` computes).

# %%
def make_noisy(x0, noise, alpha):
    return None  # your code here


check_noisy_latent(make_noisy)

# %% tags=["hide-cell"]
check_noisy_latent(lambda x0, noise, alpha: np.sqrt(alpha) * x0 + np.sqrt(1 - alpha) * noise)


# %% [markdown]
# **Exercise 3.** Write `clip_loss(logits)` with numpy: CLIP's loss for a $(B, B)$ matrix of
# image $i$ vs caption $j$ logits, where image $i$ belongs with caption $i$.

# %%
def clip_loss(logits):
    return None  # your code here


check_clip_loss(clip_loss)


# %% tags=["hide-cell"]
def clip_loss(logits):
    def cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        return -np.mean(np.diag(z - np.log(np.exp(z).sum(axis=1, keepdims=True))))
    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


check_clip_loss(clip_loss)

# %% [markdown]
# **Exercise 4.** How many training examples does the FULL plan's UNet stage process, and how
# many passes over the training images is that? Answer with a pair `(examples, passes)`.

# %%
unet = train.FULL.unet
check_images_seen(None, unet.steps, unet.batch_size, train.FULL.num_images)

# %% tags=["hide-cell"]
examples = unet.steps * unet.batch_size
check_images_seen((examples, examples / train.FULL.num_images), unet.steps, unet.batch_size,
                  train.FULL.num_images)

# %% [markdown]
# **Next:** chapter 7 uses the encoder half of this autoencoder: image-to-image, and walks
# between prompts and between noises.
