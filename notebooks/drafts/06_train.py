# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Train it yourself
#
# DRAFT (not executed yet: written against the uncommitted `sdlearn/train.py`; to finish it,
# check every cell against the committed module and the shipped manifest, measure the QUICK
# run's time on 2 cores, and move it to `notebooks/`).
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
# This chapter runs the same code in its QUICK mode (a few dozen steps: every code path, but
# the pictures stay noise), reads the loss logs, and measures the shipped model's
# prompt-adherence. The full run (`sdlearn train`, ~20 minutes) rebuilds the shipped weights.

# %%
import json

import matplotlib.pyplot as plt
import numpy as np

from sdlearn import shapes, train
from sdlearn.course import show_images, show_source

print(train.__doc__)

# %% [markdown]
# ## The plans: how long each stage trains

# %%
for name, plan in (("FULL", train.FULL), ("QUICK", train.QUICK)):
    print(name, f"{plan.num_images:,} images")
    for stage in train.STAGES:
        s = plan.stage(stage)
        print(f"  {stage:>12}: {s.steps:>5} steps x batch {s.batch_size:>3} = "
              f"{s.steps * s.batch_size:>7,} examples, lr {s.learning_rate:g}")

# %% [markdown]
# ## The data

# %%
images, captions, scenes = shapes.make_dataset(8, seed=0)
show_images(images, [c.replace(" in the", "\nin the").replace(" on a", "\non a")
                     for c in captions], suptitle="Training images and their captions",
            columns=8, size=1.8)

# %% [markdown]
# ## The three losses

# %%
show_source(train.AutoencoderTrainer.compute_loss)

# %%
show_source(train.CLIPTrainer)

# %%
show_source(train.DiffusionTrainer)

# %% [markdown]
# ## A QUICK run, from scratch

# %%
# ~2-3 min, ~1.5 GB on a 2-core CPU: three stages of 20 steps each
import tempfile
from pathlib import Path

folder = Path(tempfile.mkdtemp())
summary = train.run(quick=True, output_dir=folder / "out", checkpoint_dir=folder / "ckpt",
                    verbose=0)
for stage, result in summary["stages"].items():
    print(f"{stage:>12}: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()
                                        if isinstance(v, float) and k != "seconds"))

# %% [markdown]
# ## Loss curves from the CSV logs

# %%
import csv

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, stage in zip(axes, train.STAGES):
    rows = list(csv.DictReader(open(folder / "ckpt" / stage / "log.csv")))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    ax.plot(epochs, [float(r["loss"]) for r in rows], marker="o")
    ax.set_title(f"{stage} (QUICK run)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Samples: the QUICK model and the shipped one

# %%
from sdlearn.pipeline import StableDiffusion

prompts = ["a large red circle in the top left on a black background",
           "a small blue square in the bottom right on a white background",
           "a large yellow triangle in the center on a gray background"]
quick = StableDiffusion("tiny", weights=train.tiny_weights(folder / "out"))
shipped = StableDiffusion("tiny")
samples = np.concatenate([m.text_to_image(prompts, batch_size=3, seed=0, num_steps=20)
                          for m in (quick, shipped)])
show_images(samples, [f"QUICK: {p[:22]}..." for p in prompts]
            + [f"shipped: {p[:22]}..." for p in prompts],
            suptitle="After 20 steps per stage (top, noise) and after the full run (bottom)",
            columns=3, size=2.2)

# %% [markdown]
# ## The shipped model's measured prompt adherence

# %%
manifest = train.tiny_manifest()
print(json.dumps({k: v for k, v in manifest["training"].items() if k != "stages"}, indent=1))
for stage, result in manifest["training"]["stages"].items():
    print(stage, {k: v for k, v in result.items() if k != "settings"})

# %% [markdown]
# ## The full run
#
# `sdlearn train --output my-tiny` (about 20 minutes on a laptop CPU) trains the three stages
# with the FULL plan, writes checkpoints and a CSV log per stage in
# `sdlearn-tiny-checkpoints/`, and the four weight files with their `manifest.json` to
# `my-tiny/`. An interrupted run continues with `--resume`. Use the result with
# `StableDiffusion("tiny", weights=train.tiny_weights("my-tiny"))`.
#
# ## Exercises

# %%
from sdlearn.exercises.ch06_train import (check_clip_loss, check_images_seen,
                                          check_latent_scale, check_noisy_latent)

check_latent_scale(None)

# %% tags=["hide-cell"]
check_latent_scale(lambda latents: 1 / np.std(latents))

# %%
check_noisy_latent(None)

# %% tags=["hide-cell"]
check_noisy_latent(lambda x0, noise, alpha: np.sqrt(alpha) * x0 + np.sqrt(1 - alpha) * noise)

# %%
check_clip_loss(None)


# %% tags=["hide-cell"]
def clip_loss(logits):
    def cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        return -np.mean(np.diag(z - np.log(np.exp(z).sum(axis=1, keepdims=True))))
    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


check_clip_loss(clip_loss)

# %%
unet = train.FULL.unet
check_images_seen(None, unet.steps, unet.batch_size, train.FULL.num_images)

# %% tags=["hide-cell"]
examples = unet.steps * unet.batch_size
check_images_seen((examples, examples / train.FULL.num_images), unet.steps, unet.batch_size,
                  train.FULL.num_images)
