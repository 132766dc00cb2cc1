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
# # 3. The UNet: the network that predicts the noise
#
# Everything else in Stable Diffusion serves one network. At every sampling step the UNet
# looks at a noisy latent $x_t$, the noise level $t$ and the prompt's encoding $c$, and
# answers one question: *which noise was added?*
#
# $$\hat\epsilon = \epsilon_\theta(x_t, t, c), \qquad
#   x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,
#   \quad \epsilon \sim \mathcal N(0, I)$$
#
# Training makes $\hat\epsilon$ close to the true $\epsilon$ (chapter 6); sampling subtracts it
# a little at a time (chapter 5). Its input and output have the same shape, `(B, h, w, 4)`,
# and three things go in:
#
# | input | shape (SD v1, 512 px) | enters through |
# |---|---|---|
# | $x_t$, the noisy latent | `(B, 64, 64, 4)` | the first convolution |
# | $t$, the timestep | `(B,)` | a sinusoidal embedding added inside every **ResBlock** |
# | $c$, the prompt | `(B, 77, 768)` | **cross-attention** inside every spatial transformer |
#
# This chapter opens each piece, in the order the data meets them: the timestep embedding,
# the ResBlock, the spatial transformer, then the U-shaped path with its 12 skip connections
# (a shape table and a diagram drawn from the model itself), where the 860 million parameters
# sit, and finally **where each word of the prompt is looked at**, with the trained tiny model.
# Each piece is also checked against KerasCV's, with a number.

# %%
# ~6-50 s, ~0.7 GB on a 2-core CPU: imports Keras/TensorFlow, builds the tiny track's models
import logging
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import ops

import sdlearn.unet
from sdlearn.config import SD_V1
from sdlearn.course import at_most, load_pipeline, show_source
from sdlearn.layers import MultiHeadAttention, ResBlock, attention_weights
from sdlearn.unet import SpatialTransformer, UNet, timestep_embedding

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # no notes on retracing per batch size
sd = load_pipeline(jit_compile=False)  # XLA compiling costs more than it saves for a few calls
unet, config = sd.unet, sd.config.unet
latent_side = sd.config.image_size // sd.config.vae.downsampling_factor
print(f"UNet config: {config}")
print(f"latent: {latent_side}x{latent_side}x{config.latent_channels}, "
      f"parameters: {unet.count_params():,}")

# %% [markdown]
# The whole network is one file, `sdlearn/unet.py`. Its docstring is the map for this chapter
# (shapes for SD v1 at 512 px):

# %%
print(sdlearn.unet.__doc__)

# %% [markdown]
# ## 1. The timestep embedding
#
# The UNet must know *how* noisy its input is: at $t = 999$ the latent is almost pure noise and
# the best guess is blurry, at $t = 20$ only fine grain is left. A single number $t$ is a poor
# input for a network, so it is spread over many features, as the Transformer does with token
# positions (Vaswani et al., 2017). With $d = 320$ features and $i = 0, \dots, d/2 - 1$:
#
# $$f_i = 10000^{-i/(d/2)}, \qquad
#   \mathrm{emb}(t) = \big[\cos(t f_0), \dots, \cos(t f_{d/2-1}),\;
#                         \sin(t f_0), \dots, \sin(t f_{d/2-1})\big]$$
#
# The first features are fast waves (period $2\pi$ steps) that tell neighbouring steps apart;
# the last are slow (period up to $2\pi \cdot 10000$) and change smoothly with the overall noise
# level. SD's weights expect the cosines first.

# %%
show_source(timestep_embedding)

# %%
timesteps = np.arange(1000)
embedding = np.asarray(timestep_embedding(timesteps, 320))  # (1000, 320)
print("embedding:", embedding.shape, f"values in [{embedding.min():.3f}, {embedding.max():.3f}]")

fig, ax = plt.subplots(figsize=(9, 4))
image = ax.imshow(embedding, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="none")
ax.axvline(159.5, color="k", lw=0.8)
ax.text(80, -15, "cos", ha="center")
ax.text(240, -15, "sin", ha="center")
ax.set_title("Sinusoidal timestep embedding, d = 320 (SD v1)", pad=18)
ax.set_xlabel("feature (0-159: cosines, 160-319: sines; frequency falls to the right)")
ax.set_ylabel("timestep t")
fig.colorbar(image, ax=ax, label="feature value")
plt.show()

# %% [markdown]
# Each row is one timestep's 320 numbers. On the left, fast waves: the colours flip from row to
# row. On the right, slow waves barely change over all 1000 steps ($\cos \approx 1$,
# $\sin \approx 0$). Two timesteps are alike when their rows are; the cosine similarity
# $\frac{\langle e(t), e(s) \rangle}{\|e(t)\|\,\|e(s)\|}$ of every pair:

# %%
unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
similarity = unit @ unit.T  # (1000, 1000)
fig, ax = plt.subplots(figsize=(5, 4.2))
image = ax.imshow(similarity, cmap="viridis", origin="lower")
ax.set_title("Similarity of timestep embeddings")
ax.set_xlabel("timestep s")
ax.set_ylabel("timestep t")
fig.colorbar(image, ax=ax, label="cosine similarity")
plt.show()
for s in (499, 490, 400, 0):
    print(f"similarity(t=500, s={s:3d}) = {similarity[500, s]:.3f}")

# %% [markdown]
# Nearby timesteps get similar vectors (the bright diagonal), far-apart ones dissimilar: a
# smooth code of the noise level. Inside the UNet an MLP lifts it to
# $4 \times 320 = 1280$ features, $\mathrm{Dense}(\mathrm{swish}(\mathrm{Dense}(\mathrm{emb}(t))))$,
# which every ResBlock then reads.
#
# **Same as KerasCV?** KerasCV computes this embedding outside its model, in
# `StableDiffusion._get_timestep_embedding`; sdlearn computes it inside (so the UNet takes `t`
# itself). Both, for a few timesteps:

# %%
# ~1-3 s on a 2-core CPU: importing keras_cv
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # keras_cv's tqdm import
from keras_cv.src.models.stable_diffusion import diffusion_model as kcv_unet
from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase

kerascv = StableDiffusionBase(img_height=128, img_width=128)  # builds no model until one is used
difference = max(np.abs(np.asarray(timestep_embedding(np.array([t]), 320))
                        - np.asarray(kerascv._get_timestep_embedding(t, 1))).max()
                 for t in (0, 1, 250, 500, 981, 999))
print(f"timestep embedding, t in (0, 1, 250, 500, 981, 999): max |sdlearn - KerasCV| = "
      f"{difference:.1e}")

# %% [markdown]
# ## 2. The ResBlock: convolutions that know the noise level
#
# A ResBlock refines a feature map and adds the timestep to it. With $x$ of shape
# `(B, H, W, C_in)` and the time embedding $\tau$ of shape `(B, 1280)`:
#
# $$h = \mathrm{conv}_{3\times3}\big(\mathrm{swish}(\mathrm{GN}(x))\big)
#       + W_\tau\,\mathrm{swish}(\tau), \qquad
#   \mathrm{out} = \mathrm{skip}(x) + \mathrm{conv}_{3\times3}\big(\mathrm{swish}(\mathrm{GN}(h))\big)$$
#
# GN is GroupNorm (32 groups), $\mathrm{swish}(z) = z\,\sigma(z)$, and $W_\tau \mathrm{swish}(\tau)$
# is one vector of `C` numbers added to *every pixel*: the noise level shifts each channel.
# `skip` is the identity, or a $1\times1$ convolution when the width changes. The same class
# serves the VAE (chapter 4) without the time input.

# %%
show_source(ResBlock)

# %% [markdown]
# The first block of SD v1's second level, at a 16x16 latent (a 128 px image), with random
# weights: `(1, 16, 16, 320)` in, `(1, 16, 16, 640)` out.

# %%
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 16, 16, 320)).astype("float32")
tau = rng.standard_normal((1, 1280)).astype("float32")
context = rng.standard_normal((1, 77, 768)).astype("float32")  # stands in for c
block = ResBlock(640, norm_groups=32, time_conditioned=True)
print("x", x.shape, "+ time embedding", tau.shape, "->", tuple(block(x, tau).shape))
print(f"parameters: {block.count_params():,} (skip is a 1x1 conv: {block.skip is not None})")


# %% [markdown]
# **Same as KerasCV?** We build KerasCV's own `ResBlock(640)` on the same input, copy its
# weights into ours *by order* (how the published `.h5` files load: layer by layer, weight by
# weight), and compare the outputs:

# %%
def copy_weights_by_order(source, target):
    """Assign source's weights to target's, in Keras 2 order, after checking the shapes."""
    src = source.trainable_weights + source.non_trainable_weights
    dst = target.trainable_weights + target.non_trainable_weights
    assert [tuple(w.shape) for w in src] == [tuple(w.shape) for w in dst], "shapes differ"
    for s, d in zip(src, dst):
        d.assign(s)
    return len(src)


reference = kcv_unet.ResBlock(640)
expected = np.asarray(reference([x, tau]))
n = copy_weights_by_order(reference, block)
difference = np.abs(np.asarray(block(x, tau)) - expected).max()
print(f"ResBlock 320 -> 640 at 16x16: {n} weights copied; max |sdlearn - KerasCV| = "
      f"{difference:.1e} (outputs up to {np.abs(expected).max():.2f})")

# %% [markdown]
# ## 3. The spatial transformer: pixels look at each other, then at the prompt
#
# This is where the text enters. The feature map `(B, H, W, C)` is flattened to $N = HW$
# pixel tokens of width $C$, and one transformer block runs on them:
#
# $$\begin{aligned}
# z &\leftarrow z + \mathrm{Attention}\big(Q{=}\mathrm{LN}(z),\ K{=}V{=}\mathrm{LN}(z)\big)
#   && \text{self-attention: pixels look at pixels} \\
# z &\leftarrow z + \mathrm{Attention}\big(Q{=}\mathrm{LN}(z),\ K{=}V{=}c\big)
#   && \text{cross-attention: pixels look at the 77 tokens} \\
# z &\leftarrow z + W_2\big((W_1 \mathrm{LN}(z)) \odot \mathrm{GELU}(W_g\, \mathrm{LN}(z))\big)
#   && \text{GEGLU feed-forward, } C \to 4C \to C
# \end{aligned}$$
#
# with $\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\big(QW_q (KW_k)^\top/\sqrt{d}\big)\,VW_v$
# per head (8 heads of size $d = C/8$). In cross-attention the queries come from the pixels
# and the keys and values from the prompt: row $p$ of the softmax says how much pixel $p$
# takes from each token. Around the block: GroupNorm and a $1\times1$ convolution in, a
# $1\times1$ convolution out, and the input added back.

# %%
show_source(SpatialTransformer)

# %% [markdown]
# Attention is shared with the text encoder and the VAE; `heads` is split out so we can look
# at the attention weights later in this chapter:

# %%
show_source(MultiHeadAttention)

# %%
show_source(attention_weights)

# %% [markdown]
# **GEGLU** (Shazeer, 2020) gates the feed-forward layer: half of the $8C$ outputs of one Dense
# layer are values, the other half pass through GELU and multiply them. GELU, like swish, is a
# smooth ReLU that lets small negative values through:

# %%
z = np.linspace(-4, 4, 401).astype("float32")
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(z, np.maximum(z, 0), "k:", label="ReLU")
ax.plot(z, np.asarray(ops.gelu(z, approximate=True)), label="GELU (tanh form): GEGLU's gate")
ax.plot(z, np.asarray(ops.silu(z)), "--", label="swish = z sigmoid(z): ResBlocks")
ax.set_title("The UNet's two activations")
ax.set_xlabel("input z")
ax.set_ylabel("activation(z)")
ax.legend()
plt.show()

# %% [markdown]
# SD v1's first transformer at a 16x16 latent, against KerasCV's `SpatialTransformer(8, 40)`
# with the same weights (random, copied by order):

# %%
transformer = SpatialTransformer(320, num_heads=8, norm_groups=32)
print("x", x.shape, "+ context", context.shape, "->", tuple(transformer(x, context).shape))
reference = kcv_unet.SpatialTransformer(8, 40)
expected = np.asarray(reference([x, context]))
n = copy_weights_by_order(reference, transformer)
difference = np.abs(np.asarray(transformer(x, context)) - expected).max()
print(f"SpatialTransformer 16x16x320, 8 heads of 40: {n} weights copied, "
      f"{transformer.count_params():,} parameters; max |sdlearn - KerasCV| "
      f"{at_most(difference, floor=1e-5)} "
      f"(outputs up to {np.abs(expected).max():.2f})")

# %% [markdown]
# ## 4. The U: down, middle, up, and 12 skips
#
# The blocks are stacked in a U. On the way **down**, each level runs two (ResBlock,
# transformer) pairs, then a stride-2 convolution halves $H$ and $W$: 64, 32, 16, 8 at 512 px,
# with widths 320, 640, 1280, 1280 (no attention at the lowest level). The **middle** runs
# ResBlock, transformer, ResBlock at 8x8. On the way **up** each level runs three blocks, and
# each block first concatenates a feature map saved on the way down: the **skips**, which
# bring back the fine detail the bottleneck lost. Every intermediate $x$ on the way down is
# saved; the up path takes them last-in, first-out.
#
# Rather than trust a drawing, we read the table from the model: SD v1's own UNet, built from
# the same code, traced by Keras *symbolically* at a 64x64 latent (shapes only, no
# arithmetic). A table needs the weights' shapes, not their 860 million values, so we build
# it inside `keras.StatelessScope(initialize_variables=False)`: each variable is declared
# with its shape and initializer, and nothing is drawn or allocated, so the 3.4 GB that
# 859.5 million float32 weights would fill (4 bytes each) are never made, nor the random
# numbers drawn to fill them.

# %%
# ~6-20 s and ~0.1 GB more memory on a 2-core CPU (up to a minute on a shared machine): builds
# SD v1's UNet without allocating its weights, and traces its shapes
start = time.perf_counter()
shapes_only = keras.StatelessScope(initialize_variables=False)
with shapes_only:
    sd_unet = UNet(SD_V1.unet)
print(f"SD v1 UNet built: {sd_unet.count_params():,} parameters (declared, none allocated), "
      f"{len(sd_unet.layers)} layers (top level)")


def describe(layer):
    """A short kind for each top-level layer of the UNet graph."""
    kind = type(layer).__name__
    if isinstance(layer, keras.Sequential):  # downsample / upsample from sdlearn.layers
        inner = [type(sub).__name__ for sub in layer.layers]
        return "Upsample" if "UpSampling2D" in inner else "Downsample"
    return {"SpatialTransformer": "Transformer", "Concatenate": "Concat",
            "GroupNormalization": "GroupNorm"}.get(kind, kind)


def unet_graph(model, latent_side, run=False):
    """Rows (kind, output shape, stored-skip number, used-skip number, parameters) in the order
    Keras runs the layers, read from the model's graph; shapes for a latent_side^2 latent.

    A skip is any tensor that a Concatenate layer takes as its second input; we number them in
    the order the down path produces them.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    inputs = [(1, latent_side, latent_side, model.config.latent_channels), (1,),
              (1, 77, model.config.context_dim)]
    if run:  # a real forward pass on zeros (fast for small models)
        outputs = probe([np.zeros(s, "float32") for s in inputs])
    else:  # symbolic: shapes only
        outputs = probe.compute_output_spec([keras.KerasTensor(s) for s in inputs])
    producers = {id(layer.output): i for i, layer in enumerate(layers)}
    skip_of = {}  # layer index -> index of the layer whose output it concatenates
    for i, layer in enumerate(layers):
        if isinstance(layer, keras.layers.Concatenate):
            skip_of[i] = producers[id(layer.input[1])]
    stored = {p: k for k, p in enumerate(sorted(skip_of.values()))}
    return [(describe(layer), tuple(out.shape[1:]), stored.get(i),
             stored[skip_of[i]] if i in skip_of else None, layer.count_params())
            for i, (layer, out) in enumerate(zip(layers, outputs))]


def print_table(rows, title):
    print(title)
    print(f"{'#':>3}  {'layer':12} {'output (h, w, c)':18} {'skip':14} {'parameters':>12}")
    for i, (kind, shape, stored, used, params) in enumerate(rows):
        skip = (f"-> store #{stored}" if stored is not None else
                f"<- use #{used}" if used is not None else "")
        print(f"{i:3d}  {kind:12} {str(shape):18} {skip:14} {params:12,}")


with shapes_only:
    sd_rows = unet_graph(sd_unet, 64)
print(f"(built and traced in {time.perf_counter() - start:.0f} s)")

# %%
print_table(sd_rows, "SD v1 UNet at 512 px (latent 64x64x4), read from the model's graph")


# %% [markdown]
# Reading the table top to bottom is reading `UNet.__init__`: the two Dense layers of the time
# MLP, the input convolution (skip #0), then per level two (ResBlock, Transformer) pairs and a
# Downsample, each output stored. After the middle, every Concat takes the current $x$ and
# the most recently stored skip: #11 first, #0 last. Its output width is the sum of both,
# e.g. $1280 + 1280 = 2560$, which the next ResBlock brings back down. The same graph drawn as
# a U (each arc is one skip, from where it is stored to where it is used):

# %%
def plot_u(rows, title):
    spatial = [(i, row) for i, row in enumerate(rows) if len(row[1]) == 3]
    colours = {"ResBlock": "tab:blue", "Transformer": "tab:orange", "Downsample": "tab:red",
               "Upsample": "tab:green", "Concat": "tab:gray"}
    fig, ax = plt.subplots(figsize=(11, 3.8))
    position = {}
    for step, (i, (kind, shape, stored, used, _)) in enumerate(spatial):
        position[i] = (step, shape[0])
        ax.scatter(step, shape[0], s=12 + shape[2] / 8, color=colours.get(kind, "k"),
                   zorder=3, label=kind if kind in colours else "Conv / GroupNorm / swish")
    stored_at = {row[2]: i for i, row in enumerate(rows) if row[2] is not None}
    for i, (kind, shape, stored, used, _) in spatial:
        if used is not None:
            (x0, y0), (x1, y1) = position[stored_at[used]], position[i]
            xs = np.linspace(x0, x1, 50)
            ax.plot(xs, y0 * 1.08 + 0.25 * y0 * np.sin(np.pi * (xs - x0) / (x1 - x0)),
                    color="tab:purple", lw=0.7, alpha=0.6)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    ax.set_yscale("log", base=2)
    sides = sorted({row[1][0] for _, row in spatial})
    ax.set_yticks(sides, [str(side) for side in sides])
    ax.minorticks_off()
    ax.set_title(title)
    ax.set_xlabel("layer, in the order it runs (time MLP left out); arcs: skip connections")
    ax.set_ylabel("latent side h = w (log scale)")
    plt.show()


plot_u(sd_rows, "SD v1's UNet at 512 px (shapes only, no weights drawn): resolution of each "
                "layer's output (marker size ~ channels)")

# %% [markdown]
# ### Where the 860 million parameters are
#
# The parameter count of every row, grouped by stage (down, middle, up) and resolution:

# %%
OTHER = "time MLP, in/out convs, norm"


def parameter_breakdown(rows):
    """{(stage, side): {kind: parameters}}; stage from the graph: down until the last stored
    skip, middle until the first Concat, up after it."""
    last_store = max(i for i, row in enumerate(rows) if row[2] is not None)
    first_concat = min(i for i, row in enumerate(rows) if row[0] == "Concat")
    groups, side = {}, None
    for i, (kind, shape, stored, used, params) in enumerate(rows):
        stage = "down" if i <= last_store else "middle" if i < first_concat else "up"
        if kind in ("ResBlock", "Transformer"):
            key = (stage, shape[0])
        elif kind in ("Downsample", "Upsample"):
            key = (stage, side)  # a resampling layer belongs to the resolution it reads
        else:
            key, kind = ("in/out", 0), OTHER
        if len(shape) == 3:
            side = shape[0]
        if params:
            groups.setdefault(key, {}).setdefault(kind, 0)
            groups[key][kind] += params
    return groups


def plot_breakdown(groups, total, title):
    kinds = ["ResBlock", "Transformer", "Downsample", "Upsample", OTHER]
    keys = list(groups)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    bottom = np.zeros(len(keys))
    for kind in kinds:
        values = np.array([groups[k].get(kind, 0) for k in keys]) / 1e6
        ax.bar(range(len(keys)), values, bottom=bottom, label=kind)
        bottom += values
    for j, height in enumerate(bottom):
        ax.text(j, height, f"{height:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.12 * bottom.max())
    ax.set_xticks(range(len(keys)),
                  [f"{stage}\n{side}x{side}" if side else stage for stage, side in keys])
    ax.set_title(title)
    ax.set_xlabel("stage and latent side")
    ax.set_ylabel("parameters (millions)")
    ax.legend(fontsize=8)
    plt.show()


sd_groups = parameter_breakdown(sd_rows)
total = sum(row[4] for row in sd_rows)
assert total == sd_unet.count_params() == 859_520_964  # every parameter is in some row
plot_breakdown(sd_groups, total, f"SD v1 UNet (weights declared, not drawn): {total:,} "
                                 "parameters by stage and resolution")
for kind in ("ResBlock", "Transformer"):
    share = sum(row[4] for row in sd_rows if row[0] == kind) / total
    print(f"{kind:11}: {sum(row[0] == kind for row in sd_rows):2d} blocks, {share:.1%} of the "
          "parameters")
for side in (64, 32, 16, 8):
    share = sum(sum(v.values()) for (s, at), v in sd_groups.items() if at == side) / total
    print(f"blocks at {side}x{side} (down, middle, up): {share:.1%} of the parameters")
# Keras keeps a list of the declared variables, to allocate them at its next chance (the next
# symbolic call outside a stateless scope). We never want these: forget the model, and the list
# with all of Keras's global state (our other models keep working).
del sd_unet
keras.backend.clear_session()

# %% [markdown]
# Most parameters live where the map is small: the 16x16 and 8x8 levels hold 84% of them, the
# 64x64 level 3.4%. A $3\times3$ convolution from 2560 to 1280 channels alone has
# $9 \cdot 2560 \cdot 1280 \approx 29.5$ million weights, whatever the image size.
# Compute is the other way round: the 64x64 levels have few parameters but 4096 pixels each,
# and their self-attention compares every pixel with every other one, $4096^2$ pairs per head.
#
# **Is the whole UNet the same as KerasCV's?** Building KerasCV's full `DiffusionModel` as
# well costs another 60-90 s here, too much for this notebook, so the full comparison lives in
# the test suite. `tests/test_parity.py` builds KerasCV's model with random weights, writes it
# to a legacy `.h5` file like the published `kcv_diffusion_model.h5`, loads that file into
# sdlearn's `UNet` with sdlearn's loader, and runs both on a 16x16 latent at $t = 1, 500, 999$.
# The test asserts agreement within 1e-4; the measured **max abs difference is 5.0e-6** for
# outputs up to 2.5 (recorded in the README). Reproduce it with (a few minutes on 2 cores: the
# test's fixtures build all four KerasCV models and sdlearn's):
#
# ```bash
# .venv/bin/python -m pytest tests/test_parity.py -k "unet_matches or parameter_counts"
# ```
#
# ### The tiny track's UNet
#
# The tiny model is the same code with a smaller configuration; its table, from a real forward
# pass at its own latent size:

# %%
tiny_rows = unet_graph(unet, latent_side, run=True)
print_table(tiny_rows, f"{sd.weights_source}: UNet at {sd.config.image_size} px "
                       f"(latent {latent_side}x{latent_side}x{config.latent_channels})")
plot_u(tiny_rows, f"The tiny UNet at {sd.config.image_size} px (marker size ~ channels)")

# %% [markdown]
# ## 5. Cross-attention: where does each word go?
#
# Cross-attention is the only place where the prompt enters the UNet, so its weights show
# *where in the picture each token is used*. For pixel $p$ and token $j$ of a transformer,
#
# $$A_{pj} = \mathrm{softmax}_j\!\left(\frac{q_p \cdot k_j}{\sqrt d}\right), \qquad
#   q_p = W_q\,\mathrm{LN}(z_p),\ k_j = W_k\, c_j,$$
#
# averaged over the heads; $A_{:,j}$ reshaped to $H \times W$ is token $j$'s map (as in
# Hertz et al., 2022, "Prompt-to-prompt"). We record these maps while the trained tiny model
# generates an image, at every step and in every transformer, and average them.
#
# **How we get them, honestly.** Keras does not hand out the attention weights computed
# inside a layer. So we replay `SpatialTransformer.call` line by line with the transformer's
# *own* sublayers (the same weights), keeping the cross-attention weights from sdlearn's
# `cross_attention.heads` and `attention_weights` on the way. The replay is wired into the
# UNet's graph at each transformer's input, giving one Keras model that returns the noise
# prediction *and* the maps, and, as the proof that the replay is faithful, the replayed
# output next to the transformer's real one.

# %%
# ~1-12 s on a 2-core CPU: wires the replays into the UNet's graph
from sdlearn.layers import Composite


class CrossAttentionReplay(Composite):
    """SpatialTransformer.call, replayed with the transformer's own sublayers; returns its
    output (B, H, W, C) and the cross-attention weights (B, heads, H*W, 77)."""

    def __init__(self, transformer, **kwargs):
        super().__init__(**kwargs)
        self.transformer = transformer

    def build(self, x_shape, context_shape=None):
        pass  # nothing of its own: the transformer's weights are reused

    def call(self, x, context):
        st = self.transformer
        b, h, w, c = ops.shape(x)
        tokens = ops.reshape(st.proj_in(st.norm(x)), (b, h * w, c))
        tokens = tokens + st.self_attention(st.norm1(tokens))
        q, k, v = st.cross_attention.heads(st.norm2(tokens), context)  # (B, T, heads, d)
        weights = attention_weights(q, k)  # (B, heads, HW, 77): what we came for
        attended = ops.einsum("bhqk,bkhd->bqhd", weights, v)  # the rest of call(), unchanged
        tokens = tokens + st.cross_attention.to_out(ops.reshape(attended, (b, h * w, c)))
        value, gate = ops.split(st.geglu(st.norm3(tokens)), 2, axis=-1)
        tokens = tokens + st.ff_out(value * ops.gelu(gate, approximate=True))
        return x + st.proj_out(ops.reshape(tokens, (b, h, w, c))), weights


transformers = [layer for layer in unet.layers if isinstance(layer, SpatialTransformer)]
outputs = [unet.output]
for st in transformers:
    x_in, context_in = st.input  # the tensors the transformer reads in the UNet's graph
    outputs += [*CrossAttentionReplay(st)(x_in, context_in), st.output]
maps_model = keras.Model(unet.inputs, outputs)  # eps, then (replayed, weights, real) per layer
maps_model.compile(jit_compile=False)

# %%
# ~2-30 s on a 2-core CPU: the first call traces the model
prompt = "a red circle in the top left"
prompt_context, empty_context = sd.encode_text(prompt), sd.encode_text("")  # (1, 77, D) each
noise = np.random.default_rng(0).standard_normal((1, latent_side, latent_side,
                                                  config.latent_channels)).astype("float32")
inputs = [np.concatenate([noise, noise]), np.array([500.0, 500.0], "float32"),
          np.concatenate([empty_context, prompt_context])]  # as guidance batches them
eps, *per_layer = maps_model.predict_on_batch(inputs)
for st, (replayed, weights, real) in zip(transformers, zip(*[iter(per_layer)] * 3)):
    error = np.abs(replayed - real).max()
    print(f"transformer at {real.shape[1]}x{real.shape[2]}x{real.shape[3]}: weights "
          f"{weights.shape}, |replayed - real| max {error:.0e}")
    assert error < 1e-4

# %% [markdown]
# Now generate. `sampler.sample` calls the UNet through a function we pass it; ours calls
# `maps_model`, which returns the same noise prediction and the weights, and records the
# maps of the conditional row of the batch (guidance runs the empty prompt and the prompt as
# one batch of 2; chapter 5).

# %%
# ~1-9 s on a 2-core CPU: 25 sampling steps, each one call of maps_model
from sdlearn import sampler


def generate_with_maps(prompt, seed, num_steps=25, guidance_scale=sd.config.guidance_scale):
    """The image (uint8) and per-token maps (77, side, side) averaged over steps and layers."""
    context = sd.encode_text(prompt)
    noise = np.random.default_rng(seed).standard_normal(
        (1, latent_side, latent_side, config.latent_channels)).astype("float32")
    maps = []

    def unet_with_maps(inputs):
        eps, *per_layer = maps_model.predict_on_batch(inputs)
        step_maps = []
        for weights in per_layer[1::3]:  # (2, heads, HW, 77); row 1 is the prompt's
            side = int(np.sqrt(weights.shape[2]))
            m = weights[1].mean(axis=0).T.reshape(-1, side, side)  # (77, side, side)
            f = latent_side // side  # nearest-neighbour up to the latent grid
            step_maps.append(m.repeat(f, axis=1).repeat(f, axis=2))
        maps.append(np.mean(step_maps, axis=0))
        return eps

    latent = sampler.sample(unet_with_maps, noise, context, empty_context, num_steps,
                            guidance_scale)
    return sd.decode(latent)[0], np.mean(maps, axis=0)


def plot_token_maps(image, maps, prompt):
    ids = sd.tokenizer.encode(prompt)
    names = ["<start>"] + [sd.tokenizer.decode([i]) for i in ids[1:-1]] + ["<end>"]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(1.55 * (len(names) + 1), 2.2))
    axes[0].imshow(image)
    axes[0].set_title("generated", fontsize=8)
    axes[0].set_xlabel("x (px)", fontsize=7)
    axes[0].set_ylabel("y (px)", fontsize=7)
    extent = (0, image.shape[1], image.shape[0], 0)
    for j, (ax, name) in enumerate(zip(axes[1:], names)):
        im = ax.imshow(maps[j] / maps[j].max(), cmap="magma", vmin=0, vmax=1, extent=extent)
        ax.set_title(f"{name}\n{maps[j].mean():.1%}", fontsize=8)
        ax.set_xlabel("x (px)", fontsize=7)
        ax.set_yticks([])
    for ax in axes:
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes, fraction=0.015, pad=0.01, label="weight / token's max")
    fig.suptitle(f'Cross-attention per token, "{prompt}" ({sd.weights_source}); '
                 "under each token: its mean share of attention", fontsize=9, y=1.04)
    plt.show()
    padding = maps[len(names):].mean(axis=(1, 2)).sum()
    print(f"share of attention on the {len(names)} tokens shown: {1 - padding:.0%}; on the "
          f"{len(maps) - len(names)} padding tokens after <end>: {padding:.0%}")


image, maps = generate_with_maps(prompt, seed=0)
print(f"maps: {maps.shape} (77 tokens x latent grid), averaged over 25 steps and "
      f"{len(transformers)} transformers")
plot_token_maps(image, maps, prompt)

# %% [markdown]
# Each map is scaled to its own maximum (the colour bar), and the percentage under each token
# is how much of the pixels' attention it gets on average. The model drew what was asked, a
# red circle in the top left (the prompt names no background; this seed got a white one, with
# faint green smudges under the circle). Two things stand out. First, the nine tokens of the
# prompt get only a quarter of the attention (25%: `<start>` and `a` about 7% each, the words
# 1.6-2%); the rest, 75%, goes to the padding after `<end>` (the line under the figure), which
# the tiny model uses as a sink. Second, the words that say what and where look where the
# shape is: the maps of `red` and `top` are bright in the top left quarter, on the circle, and
# dark everywhere else, while `<start>` and `a` are the other way round, weakest on the
# circle. `circle`, `in`, `the`, `left` and `<end>` are nearly flat, varying by less than a
# factor of two over the picture. The same with another prompt:

# %%
# ~1-5 s on a 2-core CPU
prompt2 = "a blue square in the bottom right"
image2, maps2 = generate_with_maps(prompt2, seed=1)
plot_token_maps(image2, maps2, prompt2)

# %% [markdown]
# Here the attention lands on the shape even more clearly. All six words, `blue`, `square`,
# `in`, `the`, `bottom` and `right`, are brightest in the bottom right quarter, on the blue
# square, and dark elsewhere; `<start>` and `a` are the other way round, weakest on the
# square, and `<end>` is nearly flat. The prompt's tokens get 31% of the attention this time
# (69% on the padding). So the square's pixels take more from the words of the prompt, and
# the background's pixels from the tokens every prompt shares. (The picture itself has the
# blue square in the bottom right on a pale pink background, with an orange smudge above it
# and a red spot to its left.) What a token "means" to the UNet is its CLIP vector, which
# mixes in the words before it (chapter 2), so a map per token is not a map per word's
# meaning: here the colour and the shape word light up together with the words after them,
# and in the first prompt `circle` stayed flat while `red` before it and `top` after it lit
# up. That is what a 1-million parameter model trained for about 18 minutes gives. Try other
# prompts and seeds with `generate_with_maps`.
#
# ## Predict, then run
#
# 1. The UNet above was traced at a 64x64 latent. **Predict**: at a 96x64 latent (a
#    768x512 image), which numbers in the table change, and does the parameter count? Then
#    run the cell below on the tiny model at twice its latent size.
# 2. **Predict**: what happens to the UNet's output if you swap the prompt for the empty
#    prompt, but keep $x_t$ and $t$? Only cross-attention reads $c$, so the difference is made
#    there alone. Then run the second cell.

# %%
bigger = unet_graph(unet, 2 * latent_side, run=True)
print("output shape at 2x the latent side:", bigger[-1][1], "; parameters:",
      f"{sum(row[4] for row in bigger):,} (same as before: {unet.count_params():,})")

# %%
eps_empty, eps_prompt = eps  # from the check above: same x_t and t = 500, two contexts
print(f"|eps(prompt) - eps(empty)| mean {np.abs(eps_prompt - eps_empty).mean():.3f}, "
      f"vs |eps| mean {np.abs(eps_prompt).mean():.3f}")

# %% [markdown]
# Convolutions and attention work at any size, so only the shapes change; the parameters stay.
# And the prompt changes the prediction by a fraction of its size: the difference that
# classifier-free guidance multiplies (by 3 on the tiny track, 7.5 in SD; chapter 5).
#
# ## Exercises
#
# Each exercise has a `check_*` function that says what is wrong and gives a hint. Replace the
# placeholder and run the cell; the solution is hidden below it.
#
# **Exercise 1.** Write the sinusoidal timestep embedding in numpy: `embed(timesteps, dim)`,
# `(B,)` to `(B, dim)`, as SD v1 expects it.

# %%
from sdlearn.exercises.ch03_unet import (check_cross_attention_maps, check_resblock_parameters,
                                         check_skip_channels, check_timestep_embedding)


def embed(timesteps, dim):
    return None  # your code here


check_timestep_embedding(embed)


# %% tags=["hide-cell"]
def embed(timesteps, dim):
    half = dim // 2
    frequencies = np.exp(-np.log(10000) * np.arange(half) / half)
    angles = np.asarray(timesteps, dtype="float64")[:, None] * frequencies[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1)


check_timestep_embedding(embed)

# %% [markdown]
# **Exercise 2.** Without running anything: how many parameters has SD v1's ResBlock from 320
# to 640 channels (time embedding 1280 wide)? Count every weight and bias.

# %%
check_resblock_parameters(None)  # your answer: an integer

# %% tags=["hide-cell"]
conv1 = 9 * 320 * 640 + 640
time_projection = 1280 * 640 + 640
conv2 = 9 * 640 * 640 + 640
norms = 2 * 320 + 2 * 640
skip = 320 * 640 + 640
check_resblock_parameters(conv1 + time_projection + conv2 + norms + skip)

# %% [markdown]
# **Exercise 3.** List the channel counts of SD v1's 12 skips in the order the down path
# stores them (first the input convolution's output).

# %%
check_skip_channels(None)  # your answer: a list of 12 integers

# %% tags=["hide-cell"]
check_skip_channels([320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280])
print([row[1][2] for row in sd_rows if row[2] is not None])  # read from the graph above


# %% [markdown]
# **Exercise 4.** Write `token_maps(q, k, height, width)`: from the cross-attention's queries
# `q` `(1, H*W, heads, d)` and keys `k` `(1, T, heads, d)`, the maps `(T, H, W)` of section 5,
# averaged over heads (numpy or `keras.ops`).

# %%
def token_maps(q, k, height, width):
    return None  # your code here


check_cross_attention_maps(token_maps)


# %% tags=["hide-cell"]
def token_maps(q, k, height, width):
    weights = ops.mean(attention_weights(q, k)[0], axis=0)  # (H*W, T)
    return ops.reshape(ops.transpose(weights), (-1, height, width))


check_cross_attention_maps(token_maps)

# %% [markdown]
# **Next:** chapter 4 opens the VAE, which turns the UNet's 4-channel latents into pixels.
