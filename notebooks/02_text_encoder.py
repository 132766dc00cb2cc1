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
# # 2. The text encoder: 77 ids become 77 vectors
#
# Chapter 1 turned a prompt into token ids $t_0, \dots, t_{76}$. The **text encoder** turns
# them into the **context** $c \in \mathbb{R}^{77 \times D}$ that the UNet reads through
# cross-attention (chapter 3). Stable Diffusion v1 uses the text half of OpenAI's CLIP
# ViT-L/14 (Radford et al., 2021), frozen: a 12-layer transformer, $D = 768$ wide, that reads
# the prompt left to right like a language model. The tiny track uses the same code with a
# smaller configuration, trained by sdlearn on the shapes world.
#
# The whole computation, for a batch of $B$ prompts:
#
# $$x^{(0)}_i = E[t_i] + P[i] \qquad \text{(token + position embedding, } (B, 77, D))$$
# $$x^{(\ell+1)} = \text{CLIPLayer}_\ell(x^{(\ell)}), \quad \ell = 0, \dots, L-1
#   \qquad c = \text{LayerNorm}(x^{(L)})$$
#
# We open each piece, run it, and look at what it does. At the end we check, with a number,
# that sdlearn's encoder computes what KerasCV's computes on the same weights.

# %%
# ~6-35 s, ~0.7 GB on a 2-core CPU: imports Keras/TensorFlow, loads the tiny pipeline
import matplotlib.pyplot as plt
import numpy as np
from keras import ops

from sdlearn.course import load_pipeline, show_source
from sdlearn.layers import attention_weights
from sdlearn.text_encoder import CLIPLayer, TextEncoder, TokenAndPositionEmbedding, quick_gelu
from sdlearn.tokenizer import Tokenizer

sd = load_pipeline()  # the track in use: $SDLEARN_TRACK, default "tiny" (shipped, offline)
encoder, tokenizer = sd.text_encoder, sd.tokenizer
config = encoder.config
print(config)
print(f"{encoder.count_params():,} parameters")

# %% [markdown]
# The encoder is a plain Keras functional model: an input of 77 ids, one embedding layer,
# `num_layers` CLIP layers and a final LayerNorm. Its source fits on a screen:

# %%
show_source(TextEncoder)

# %%
embedding = encoder.layers[1]
clip_layers = [layer for layer in encoder.layers if isinstance(layer, CLIPLayer)]
final_norm = encoder.layers[-1]
print(type(embedding).__name__, "|", len(clip_layers), "x CLIPLayer |",
      type(final_norm).__name__)

prompt = "a large red circle in the top left on a black background"
tokens = tokenizer(prompt)  # (1, 77)
words = [tokenizer.decode([i]) or ("<start>" if i == 49406 else "<end>")
         for i in tokens[0]]
length = int(np.argmax(tokens[0])) + 1  # tokens up to and including the first end token
print("tokens:", tokens.shape, "| prompt tokens with start and end:", length)

# %% [markdown]
# ## Token and position embeddings
#
# Two lookup tables: $E$ has a row of $D$ numbers per vocabulary entry (49,408 rows), $P$ a row
# per position (77 rows). Attention without a mask ignores order (it sees a *set* of
# vectors); $P$ tells the model that "red" comes before "circle".

# %%
show_source(TokenAndPositionEmbedding)

# %%
x = embedding(tokens)
E = embedding.token_embedding.embeddings  # (49408, D)
P = embedding.position_embedding.embeddings  # (77, D)
print("E:", tuple(E.shape), " P:", tuple(P.shape), " x = E[t] + P:", tuple(x.shape))
by_hand = ops.take(E, tokens[0], axis=0) + P
print(f"max |x - (E[t] + P)| = {float(ops.max(ops.abs(x[0] - by_hand))):.3g}")

# %% [markdown]
# How alike are the learned position vectors? The cosine similarity
# $\cos(P_i, P_j) = P_i \cdot P_j / (\lVert P_i \rVert \lVert P_j \rVert)$ for every pair:

# %%
Pn = ops.convert_to_numpy(P)
Pn = Pn / np.linalg.norm(Pn, axis=1, keepdims=True)
fig, ax = plt.subplots(figsize=(4.6, 3.8))
image = ax.imshow(Pn @ Pn.T, cmap="RdBu_r", vmin=-1, vmax=1)
ax.set_title(f"Position embeddings: cosine similarity\n({sd.weights_source})", fontsize=10)
ax.set_xlabel("position j")
ax.set_ylabel("position i")
fig.colorbar(image, ax=ax, label="cos(P_i, P_j)")
plt.show()
norms = np.linalg.norm(ops.convert_to_numpy(P), axis=1)
print(f"|P_i|, mean over positions 0-13: {norms[:14].mean():.3g}; "
      f"over positions 14-76: {norms[14:].mean():.3g}")

# %% [markdown]
# No pattern: apart from the diagonal, the cosines scatter around 0. The norms tell why. Keras
# starts an embedding row as 32 numbers uniform in $\pm 0.05$, a norm of about
# $\sqrt{32 \cdot 0.1^2 / 12} \approx 0.163$, and that is where positions 14 to 76 still are
# (0.164): the longest shapes-world caption is 14 tokens with start and end, and the tiny
# CLIP's loss reads the vector at the first end token, which (causal attention, next section)
# only sees positions up to 13. So sdlearn trains it on those first 14 tokens alone, and the
# later rows never received a gradient. The rows training did use are no larger on average
# (0.163) after its 750 steps, and their corner of the picture (positions 0 to 13) looks as
# patternless as the rest. (On the sd-v1 track, CLIP read captions of every length: run this
# cell there to compare.)
#
# ## Causal self-attention
#
# In each layer every token looks at the others. With queries $Q = x W_Q$, keys $K = x W_K$ and
# values $V = x W_V$, split into $h$ heads of size $d = D / h$:
#
# $$\text{Attention}(Q, K, V) = \text{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}} + M\right) V,
# \qquad M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}$$
#
# The mask $M$ makes the attention **causal**: token $i$ sees tokens $0..i$ only, as in GPT
# (CLIP's text model was built from GPT-2's). $e^{-\infty} = 0$, so the softmax puts no weight
# on the future. `sdlearn.layers.attention_weights` is that formula:

# %%
show_source(attention_weights)

# %% [markdown]
# A picture of the mask for the first tokens of our prompt, and what it does to attention
# weights computed from random queries and keys (each row sums to 1; everything right of the
# diagonal is exactly 0):

# %%
n = 8
rng = np.random.default_rng(0)
q = rng.standard_normal((1, n, 1, 16)).astype("float32")  # (B, T, heads, d)
k = rng.standard_normal((1, n, 1, 16)).astype("float32")
weights = ops.convert_to_numpy(attention_weights(q, k, causal=True))[0, 0]  # (T, T)
print("weights:", weights.shape, "| row sums:", np.round(weights.sum(axis=1), 4),
      "| max above the diagonal:", weights[np.triu_indices(n, 1)].max())

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
allowed = np.tril(np.ones((n, n)))
axes[0].imshow(allowed, cmap="Greys", vmin=0, vmax=1.4)
axes[0].set_title("Causal mask: query i may attend to key j (dark)")
image = axes[1].imshow(weights, cmap="viridis")
axes[1].set_title("softmax(QK^T/sqrt(d) + M), random q and k")
fig.colorbar(image, ax=axes[1], label="attention weight")
for ax in axes:
    ax.set_xticks(range(n), words[:n], rotation=60, fontsize=8)
    ax.set_yticks(range(n), words[:n], fontsize=8)
    ax.set_xlabel("key j (attended to)")
    ax.set_ylabel("query i (attending)")
fig.tight_layout()
plt.show()

# %% [markdown]
# One consequence matters for Stable Diffusion: the vector at position $i$ depends only on
# tokens $0..i$. So the padding after a prompt never changes the prompt's own vectors, and two
# prompts that start alike have identical vectors up to where they differ. A number:

# %%
short, longer = tokenizer(["a red circle", "a red circle in the top left"])
c_short, c_long = ops.convert_to_numpy(encoder(np.stack([short, longer])))
shared = 4  # <start> a red circle
print(f"positions 0-{shared - 1}: max difference {np.abs(c_short[:shared] - c_long[:shared]).max():.3g}")
print(f"position {shared}: max difference {np.abs(c_short[shared] - c_long[shared]).max():.3g}"
      " (<end> in one, 'in' in the other)")

# %% [markdown]
# ## The CLIP layer: pre-norm attention and MLP
#
# Each layer adds two things to its input (the **residual stream**), each computed from a
# LayerNorm-ed copy of it (the "pre-norm" arrangement of GPT-2, which trains more stably than
# normalising after the addition):
#
# $$x \leftarrow x + \text{Attention}(\text{LN}_1(x)), \qquad
#   x \leftarrow x + W_2\, \text{quick\_gelu}(W_1\, \text{LN}_2(x))$$
#
# The attention layer is `sdlearn.layers.MultiHeadAttention`, shared with the UNet; CLIP's
# version has biases on $W_Q, W_K, W_V$. Its `heads(x, context)` method returns the per-head
# $Q, K, V$, which we use below to draw attention maps.

# %%
show_source(CLIPLayer)

# %% [markdown]
# Running the layers one by one, with the shape at each step, must give exactly what the
# model gives in one call:

# %%
x = embedding(tokens)
print("embedding    ", tuple(x.shape))
for i, layer in enumerate(clip_layers):
    x = layer(x)
    print(f"CLIPLayer {i:<2} ", tuple(x.shape), f" |x| per token: {float(ops.mean(ops.norm(x, axis=-1))):.3g}")
context = final_norm(x)
print("LayerNorm    ", tuple(context.shape))
print(f"max |layer by layer - encoder(tokens)| = "
      f"{float(ops.max(ops.abs(context - encoder(tokens)))):.3g}")

# %% [markdown]
# ### quick_gelu
#
# The MLP's activation is CLIP's `quick_gelu`, $x\,\sigma(1.702\,x)$, a cheaper stand-in for
# GELU, $x\,\Phi(x)$ with $\Phi$ the standard normal CDF. The weights were trained with it, so
# we must use it too (GELU instead would change every output a little).

# %%
show_source(quick_gelu)

# %%
z = np.linspace(-5, 5, 501).astype("float32")
quick = ops.convert_to_numpy(quick_gelu(z))
exact = ops.convert_to_numpy(ops.gelu(z, approximate=False))
print(f"max |quick_gelu - gelu| = {np.abs(quick - exact).max():.3f} at x = "
      f"{z[np.abs(quick - exact).argmax()]:.2f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].plot(z, exact, label="gelu: x Phi(x)")
axes[0].plot(z, quick, "--", label="quick_gelu: x sigmoid(1.702 x)")
axes[0].plot(z, np.maximum(z, 0), ":", color="gray", label="relu, for reference")
axes[0].set_title("quick_gelu and gelu")
axes[0].set_xlabel("x")
axes[0].set_ylabel("activation")
axes[0].legend(fontsize=8)
axes[1].plot(z, quick - exact)
axes[1].set_title("Their difference")
axes[1].set_xlabel("x")
axes[1].set_ylabel("quick_gelu(x) - gelu(x)")
fig.tight_layout()
plt.show()


# %% [markdown]
# ## Attention maps
#
# Which earlier tokens does each token look at? We run the prompt up to layer $\ell$, take
# that layer's queries and keys with `heads`, and compute the causal attention weights
# $(B, h, 77, 77)$. We plot the prompt's tokens (the padding only repeats the end token).

# %%
def attention_maps(tokens, layer_index):
    """Causal attention weights (heads, T, T) of one CLIPLayer for one prompt."""
    x = embedding(tokens)
    for layer in clip_layers[:layer_index]:
        x = layer(x)
    layer = clip_layers[layer_index]
    q, k, v = layer.attention.heads(layer.norm1(x))  # each (1, 77, heads, d)
    print(f"layer {layer_index}: q, k, v {tuple(q.shape)} -> weights (B, heads, T, T)")
    return ops.convert_to_numpy(attention_weights(q, k, causal=True))[0]


layer_index = len(clip_layers) - 1
maps = attention_maps(tokens, layer_index)[:, :length, :length]
heads = maps.shape[0]
columns = min(heads, 4)
rows = -(-heads // columns)
fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows + 0.5),
                         squeeze=False, layout="constrained")
for h, ax in enumerate(axes.flat):
    if h >= heads:
        ax.axis("off")
        continue
    image = ax.imshow(maps[h], cmap="magma", vmin=0, vmax=1)
    ax.set_title(f"head {h}", fontsize=9)
    ax.set_xticks(range(length), words[:length], rotation=90, fontsize=6)
    ax.set_yticks(range(length), words[:length], fontsize=6)
    ax.set_xlabel("key (attended to)", fontsize=7)
    ax.set_ylabel("query", fontsize=7)
fig.colorbar(image, ax=axes, label="attention weight", shrink=0.6)
fig.suptitle(f"Attention of layer {layer_index} for {prompt!r} ({sd.weights_source})",
             fontsize=10)
plt.show()

# %% [markdown]
# Every map is lower-triangular. The first few tokens put most of their weight on `<start>`
# (they have little else to look at; larger transformers also "park" unneeded attention on
# the first token, an "attention sink"). Later tokens look back at content words: in heads 1,
# 2 and 3 "circle", "in" and several later tokens attend to "red"; in head 3 "on", "a",
# "black" and "background" attend to "left"; in head 0 "background" and `<end>` put most of
# their weight on "black". The **end token** row is special: it is the only position that has
# read the whole prompt (here it looks at "black" in head 0, at "red" and "left" in head 3).
#
# ## How prompts relate
#
# CLIP was trained to match each caption with its image using the vector at the first end
# token, the **pooled** embedding. (Stable Diffusion itself uses all 77 vectors, the full
# context, not this one vector.) Comparing the pooled vectors of a few prompts with the cosine
# similarity shows what the encoder thinks is alike:

# %%
prompts = ["a red circle", "a red square", "a blue circle", "a blue square",
           "a large red circle in the top left", "a small red circle in the bottom right",
           "a green triangle on a white background", "a yellow triangle on a black background"]
batch = tokenizer(prompts)
contexts = ops.convert_to_numpy(encoder(batch))  # (8, 77, D)
end = np.argmax(batch, axis=1)  # the first end token: 49407 is the largest id
pooled = contexts[np.arange(len(prompts)), end]  # (8, D)
pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
similarity = pooled @ pooled.T
print("context:", contexts.shape, "-> pooled at positions", end, "->", pooled.shape)

fig, ax = plt.subplots(figsize=(7, 5.5))
image = ax.imshow(similarity, cmap="viridis")
for i in range(len(prompts)):
    for j in range(len(prompts)):
        ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if similarity[i, j] < similarity.mean() else "black")
ax.set_xticks(range(len(prompts)), prompts, rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(len(prompts)), prompts, fontsize=8)
ax.set_xlabel("prompt")
ax.set_ylabel("prompt")
ax.set_title(f"Cosine similarity of pooled (end-token) embeddings\n({sd.weights_source})",
             fontsize=10)
fig.colorbar(image, ax=ax, label="cosine similarity")
plt.show()

# %% [markdown]
# The tiny encoder's pooled vector carries **colour and shape** about equally: "a red circle"
# is at 0.58 from "a red square" (same colour), at 0.44 from "a blue circle" (same shape) and
# at -0.04 from "a blue square" (neither); "a blue circle" and "a blue square" are at 0.57.
# Size and position move it as much: "a large red circle in the top left" and "a small red
# circle in the bottom right" are at only 0.06, though each is close to "a red circle" (0.64
# and 0.69). The two triangle prompts are at 0.34 from each other and below 0 from all the
# rest. Its CLIP training ended at 78% accuracy (picking the right caption among 128, from the
# manifest in chapter 6). An earlier tiny encoder, trained a third as long (59%), put "a red
# circle" and "a red square" at 0.99: its pooled vector was almost all colour, and its model
# drew the same rounded blob for both shapes. The UNet reads all 77 vectors, not only this
# one; position 3 ("circle" or "square") differs between those prompts too (see the questions
# at the end of this chapter).
#
# ## Same numbers as KerasCV
#
# sdlearn's encoder is meant to be CLIP's text encoder exactly, so that it runs the published
# SD v1.4 weights. We check it against KerasCV's implementation at the full SD v1 size
# (123 M parameters): build KerasCV's `TextEncoder` (random weights, since nothing is
# downloaded here), write its weights to a legacy Keras `.h5` file, the format of the
# published `kcv_encoder.h5`, load that file into sdlearn's `TextEncoder()` with its own loader,
# and run both on the same prompts.

# %%
# ~13-70 s, ~2.2 GB on a 2-core CPU: builds two full-size (123 M parameter) text encoders
import tempfile
import warnings
from pathlib import Path

import h5py
import keras
from keras.src.legacy.saving import legacy_h5_format

warnings.filterwarnings("ignore", message="IProgress not found")  # keras_cv imports tqdm.auto
from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder as KerasCVTextEncoder

keras.utils.set_random_seed(0)  # the same random weights in every run
reference = KerasCVTextEncoder(77, download_weights=False)  # KerasCV's random initial weights
ours = TextEncoder()  # TextEncoderConfig(): SD v1's size
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "kcv_encoder.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    ours.load_weights(path)

check_prompts = ["a photograph of an astronaut riding a horse", "",
                 "a large red circle in the top left on a black background"]
check_tokens = Tokenizer()(check_prompts)
positions = np.repeat(np.arange(77, dtype="int32")[None], len(check_prompts), axis=0)
expected = reference.predict_on_batch({"tokens": check_tokens, "positions": positions})
got = ops.convert_to_numpy(ours(check_tokens))
print(f"parameters: KerasCV {reference.count_params():,}, sdlearn {ours.count_params():,}")
print(f"outputs {got.shape}, largest |value| {np.abs(expected).max():.3g}")
print(f"max |sdlearn - KerasCV| = {np.abs(got - expected).max():.2g} "
      f"over {len(check_prompts)} prompts x 77 positions x 768")
assert np.abs(got - expected).max() < 1e-4
del reference, ours

# %% [markdown]
# The same function: here the two agree to the last bit (a largest difference of 0), on
# weights neither side chose. (The weights are random, so the outputs themselves mean nothing;
# the agreement is the result. `tests/test_parity.py` does the same for the UNet, the decoder
# and the image encoder.)
#
# ## Predict, then run
#
# 1. The context of `"a red circle"` at position 2 (`red`): does it change if the prompt
#    becomes `"a red square"`? And at position 3?
# 2. Is the context at position 40 (padding) the same for `"a red circle"` and
#    `"a blue circle"`?
# 3. The empty prompt `""`: are all its padding positions 2..76 the same vector?

# %%
a, b, c, empty = ops.convert_to_numpy(
    encoder(tokenizer(["a red circle", "a red square", "a blue circle", ""])))
print(f"1. position 2: {np.abs(a[2] - b[2]).max():.3g}   position 3: {np.abs(a[3] - b[3]).max():.3g}")
print(f"2. position 40: {np.abs(a[40] - c[40]).max():.3g}")
print(f"3. spread of the empty prompt's positions 2..76: {np.abs(empty[2:] - empty[2]).max():.3g}")

# %% [markdown]
# (1.) Position 2 reads only `<start> a red`, the same in both prompts: difference 0.
# Position 3 ("circle" or "square") differs, by up to 3.76. (2.) No: the padding positions
# read the whole prompt before them, so "red" and "blue" change them too (by up to 2.17).
# (3.) No: the padding tokens are all the same id, but each sits at a different position and
# reads a different number of earlier padding tokens, so their vectors differ (by up to
# 1.73).
#
# ## Exercises
#
# Replace each `None` with your answer and run the cell; the check says what is wrong and
# gives a hint. Solutions are in the hidden cells.
#
# **Exercise 1.** Write the $5 \times 5$ causal mask as an array of 0/1: entry $(i, j)$ is 1 when
# query $i$ may attend to key $j$.

# %%
from sdlearn.exercises.ch02_text_encoder import (check_causal_mask, check_clip_layer_parameters,
                                                 check_eos_position, check_quick_gelu)

check_causal_mask(None)  # your 5x5 array

# %% tags=["hide-cell"]
check_causal_mask(np.tril(np.ones((5, 5))))


# %% [markdown]
# **Exercise 2.** Write `quick_gelu` with numpy, for a numpy array `x`.

# %%
def my_quick_gelu(x):
    return None  # your code here


check_quick_gelu(my_quick_gelu)


# %% tags=["hide-cell"]
def my_quick_gelu(x):
    return x / (1 + np.exp(-1.702 * x))


check_quick_gelu(my_quick_gelu)

# %% [markdown]
# **Exercise 3.** How many parameters has one `CLIPLayer` at SD v1's size (width 768,
# 12 heads, MLP width 3072)? Count by hand, then check.

# %%
check_clip_layer_parameters(None)  # your number

# %% tags=["hide-cell"]
# attention: 4 Dense 768 -> 768 with bias; two LayerNorms (scale, shift); MLP 768 -> 3072 -> 768
answer = 4 * (768 * 768 + 768) + 2 * 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768)
check_clip_layer_parameters(answer)
from sdlearn.config import TextEncoderConfig

layer = CLIPLayer(TextEncoderConfig())  # build one SD v1 layer and let Keras count
layer(np.zeros((1, 77, 768), "float32"))
print(f"by hand {answer:,}, Keras counts {layer.count_params():,}")

# %% [markdown]
# **Exercise 4.** CLIP pools the vector at the first end token. At which position (0..76) is it
# for `"a small blue triangle in the center"`?

# %%
check_eos_position(None)  # your number

# %% tags=["hide-cell"]
check_eos_position(8)  # <start> a small blue triangle in the center <end>: position 8

# %% [markdown]
# **Next:** chapter 3 opens the UNet, where these 77 vectors enter through cross-attention.
