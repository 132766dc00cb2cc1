# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
# ---

# %% [markdown]
# # 8. Performance: where the time goes, and how to spend less of it
#
# Chapters 0 to 7 chose the readable way every time. This chapter measures what that costs
# and what can be won back. sdlearn has seven **fast paths**, each one switch; each computes
# the same Stable Diffusion, and for each we (1) say what it does and why it should help,
# with the arithmetic, (2) show the code, (3) check with a number that it computes what the
# plain float32 path computes, and (4) time it.
#
# | fast path | switch |
# |---|---|
# | XLA: each model compiled into one fused program | `StableDiffusion(jit_compile=True)` (the default) |
# | guidance as ONE UNet call of batch $2B$ | `batched_guidance=True` (the default); `False` is KerasCV's two calls of $B$ |
# | the whole sampling loop as one program | `compiled_loop=True` |
# | half precision | `dtype_policy="mixed_bfloat16"` or `"mixed_float16"` |
# | attention in cache-sized blocks, or a fused kernel | `sdlearn.layers.ATTENTION = "blocked"` (the default), `"fused"`; `"einsum"` is the formula as written |
# | 3x3 convolutions with fewer multiplies (Winograd) | `sdlearn.layers.CONVOLUTION = "winograd"`; `"direct"` (the default) is Keras's convolution |
# | upsampling without the 2x copy: folded into its convolution | `sdlearn.layers.UPSAMPLING = "folded"`; `"copy"` (the default) is SD's definition |
#
# The demonstrations run the **tiny** model's architecture with **random weights**: speed and
# agreement do not depend on what the weights have learned, and nothing here is a picture.
# The full-size measurements (Stable Diffusion v1 at 256 and 512 px, sdlearn against KerasCV)
# take minutes per call on this course's 2-core CPU; they live in `benchmarks/`, and section 9
# reads them from there.
#
# A warning that applies to every time in this chapter: times depend on the machine and on
# what else runs on it. The cells that print times are not compared when the notebook is
# tested; the cells that print agreement are.

# %%
# ~3-10 s and ~700 MB on a 2-core CPU: importing TensorFlow
import collections
import importlib.util
import os
import re
import textwrap
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import ops

from sdlearn import fast, layers, sampler
from sdlearn.config import SD_V1, TINY
from sdlearn.course import at_most, show_source
from sdlearn.pipeline import StableDiffusion
from sdlearn.unet import UNet

ROOT = Path(fast.__file__).resolve().parents[1]  # the repository: benchmarks/ lives there
print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")

# %% [markdown]
# The module `sdlearn.fast` holds the fast paths that are not a single flag elsewhere, and its
# docstring is the map of this chapter:

# %%
print(fast.__doc__)


# %% [markdown]
# ## 1. Where the time goes: counting FLOPs
#
# Before timing anything, count the work. Almost all of Stable Diffusion's arithmetic is in
# layers that multiply matrices, and each multiply-add is counted as 2 floating-point
# operations (FLOPs):
#
# - a convolution with a $k \times k$ kernel from $C_\text{in}$ to $C_\text{out}$ channels on
#   an $H \times W$ map computes $H W C_\text{out}$ outputs, each a dot product of length
#   $k^2 C_\text{in}$: $\;2\,H W k^2 C_\text{in} C_\text{out}$ FLOPs;
# - a dense layer on $T$ tokens: $\;2\,T\,C_\text{in} C_\text{out}$;
# - attention of $T_q$ queries over $T_k$ keys, $h$ heads of size $d$ (width $C = h d$):
#   the scores $QK^\top$ and the weighted sum of the values each cost $2\,T_q T_k C$, so
#   $\;4\,T_q T_k C$. Self-attention over the pixels of an $s \times s$ map has
#   $T_q = T_k = s^2$: its cost grows with $s^4$.
#
# Normalisations, activations and additions are a few FLOPs per value, a rounding error next
# to these. Here is a counter that walks the UNet's structure (the loops of
# `sdlearn.unet.UNet`, the blocks of `ResBlock` and `SpatialTransformer`) and applies the
# three formulas. It reads only the configuration, so it can count the full-size model without
# building it.

# %%
def unet_flops(c, side, context_tokens=77):
    """FLOPs of one UNet call on ONE image with a (side x side) latent, by (level side, kind)."""
    flops = collections.Counter()

    def conv(s, k, c_in, c_out):  # 2 H W k^2 C_in C_out
        flops[s, "convolutions"] += 2 * s * s * k * k * c_in * c_out

    def dense(s, tokens, c_in, c_out):  # 2 T C_in C_out
        flops[s, "dense layers"] += 2 * tokens * c_in * c_out

    def attention(s, t_q, t_k, width):  # q k^T and weights @ v, all heads: 2 x 2 T_q T_k C
        flops[s, "attention matmuls"] += 4 * t_q * t_k * width

    def res_block(s, c_in, c_out):
        conv(s, 3, c_in, c_out)
        dense(s, 1, c.time_embedding_dim, c_out)  # the timestep's projection
        conv(s, 3, c_out, c_out)
        if c_in != c_out:
            conv(s, 1, c_in, c_out)  # the skip's 1x1 convolution

    def transformer(s, width):
        pixels = s * s
        conv(s, 1, width, width)  # proj_in
        dense(s, pixels, width, 3 * width)  # self-attention: q, k, v from the pixels
        attention(s, pixels, pixels, width)
        dense(s, pixels, width, width)  # its output projection
        dense(s, pixels, width, width)  # cross-attention: q from the pixels...
        dense(s, context_tokens, c.context_dim, 2 * width)  # ...k, v from the 77 text tokens
        attention(s, pixels, context_tokens, width)
        dense(s, pixels, width, width)
        dense(s, pixels, width, 8 * width)  # GEGLU: value and gate, 4C each
        dense(s, pixels, 4 * width, width)
        conv(s, 1, width, width)  # proj_out

    dense(side, 1, c.channels[0], c.time_embedding_dim)  # timestep MLP
    dense(side, 1, c.time_embedding_dim, c.time_embedding_dim)
    s, width = side, c.channels[0]
    conv(s, 3, c.latent_channels, width)
    skips = [width]
    for level, (channels, has_attention) in enumerate(zip(c.channels, c.attention)):
        for _ in range(c.res_blocks):
            res_block(s, width, channels)
            width = channels
            if has_attention:
                transformer(s, width)
            skips.append(width)
        if level < len(c.channels) - 1:
            s //= 2
            conv(s, 3, width, width)  # stride-2 downsampling: outputs at the new size
            skips.append(width)
    res_block(s, width, width)
    transformer(s, width)
    res_block(s, width, width)
    for level in reversed(range(len(c.channels))):
        channels, has_attention = c.channels[level], c.attention[level]
        for _ in range(c.res_blocks + 1):
            res_block(s, width + skips.pop(), channels)  # concatenated skip
            width = channels
            if has_attention:
                transformer(s, width)
        if level > 0:
            s *= 2
            conv(s, 3, width, width)  # nearest upsampling, then a conv at the new size
    conv(s, 3, width, c.latent_channels)
    return flops


# %% [markdown]
# Does it count what others count? `benchmarks/benchmark.py` carries the counts that PyTorch's
# FLOP counter made on the same architecture (diffusers' UNet); we load them from there.

# %%
spec = importlib.util.spec_from_file_location("benchmark", ROOT / "benchmarks" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)  # only its constants: it measures nothing on import

for side in (64, 32):
    ours = sum(unet_flops(SD_V1.unet, side).values())
    theirs = benchmark.UNET_FLOP[side]
    print(f"SD v1 UNet, {8 * side} px ({side}x{side} latent): our count {ours / 1e12:.4f} TFLOP, "
          f"PyTorch's counter {theirs / 1e12:.3f} TFLOP (difference {ours / theirs - 1:+.1%})")
tiny_flops = sum(unet_flops(TINY.unet, 8).values())
print(f"tiny UNet, 64 px (8x8 latent): {tiny_flops / 1e6:.1f} MFLOP per image, "
      f"{benchmark.UNET_FLOP[64] / tiny_flops:,.0f}x less")

# %% [markdown]
# The same to three digits. Where does a 512 px call spend its 0.8 TFLOP?

# %%
counts = unet_flops(SD_V1.unet, 64)
kinds = ["convolutions", "dense layers", "attention matmuls"]
sides = [64, 32, 16, 8]
fig, ax = plt.subplots(figsize=(7, 3))
left = np.zeros(len(sides))
for kind in kinds:
    values = np.array([counts[s, kind] / 1e9 for s in sides])
    ax.barh([f"{s}x{s}" for s in sides], values, left=left, label=kind)
    left += values
ax.set_title("One SD v1 UNet call at 512 px: GFLOP by level and kind")
ax.set_xlabel("GFLOP")
ax.set_ylabel("latent resolution of the level")
ax.invert_yaxis()
ax.legend(fontsize=8)
plt.show()
for kind in kinds:
    total = sum(counts[s, kind] for s in sides)
    print(f"{kind:>18}: {total / 1e9:6.1f} GFLOP ({total / sum(counts.values()):.0%})")
print(f"attention matmuls at the 64x64 level: {counts[64, 'attention matmuls'] / 1e9:.1f} GFLOP")

# %% [markdown]
# Convolutions take more than half; the attention matmuls about a sixth, most of it at the
# 64x64 level, where each of 4096 pixels attends to all 4096.
#
# ### The cost of one image, and the floor it sets
#
# With classifier-free guidance (chapter 5) every step needs the UNet's prediction with the
# prompt *and* without it, two passes of 0.803 TFLOP; the decoder runs once; the text encoder
# twice (prompt and empty prompt). For $n$ steps:
#
# $$\text{FLOP}_\text{image} = 2 n\,F_\text{UNet} + F_\text{decoder} + 2 F_\text{text}
#   = 2 \cdot 50 \cdot 0.803 + 2.51 + 0.026 \approx 82.8 \text{ TFLOP} \quad (n = 50).$$
#
# Dividing by what the hardware can do gives a **floor**: no implementation can be faster.
# The rate of a large float32 matrix multiply is the practical ceiling of a CPU (the project's
# measurements on this course's 2-core machine when idle: about 135 GFLOP/s on the AMD Zen 3
# it first ran on, about 480 on the Zen 5 with AVX-512 it ran on in December 2026); an H100's
# dense bfloat16 tensor cores peak at 989 TFLOP/s.

# %%
steps = 50
image_flop = (2 * steps * benchmark.UNET_FLOP[64] + benchmark.DECODER_FLOP[512]
              + 2 * benchmark.TEXT_FLOP)
print(f"one 512 px image, {steps} guided steps: {image_flop / 1e12:.1f} TFLOP, "
      f"{2 * steps * benchmark.UNET_FLOP[64] / image_flop:.0%} of it in the UNet")
for hardware, peak in [("2-core Zen 3 CPU, float32 matmul rate ~135 GFLOP/s", 135e9),
                       ("2-core Zen 5 CPU, float32 matmul rate ~480 GFLOP/s", 480e9),
                       ("H100, dense bfloat16 peak 989 TFLOP/s", 989e12)]:
    seconds = image_flop / peak
    print(f"  floor on {hardware}: {seconds:,.3g} s" + (f" = {seconds / 60:.0f} min"
                                                      if seconds > 60 else ""))


# %% [markdown]
# Ten minutes per image on the older CPU, three on the newer: that is the floor, and at full
# size a CPU has little to give beyond keeping its multiply units busy. The tiny model costs
# 57 MFLOP per image and call, so 50 guided steps are 6 GFLOP, a twentieth of a second of
# arithmetic. As we will see, its time goes almost entirely *between* the multiplies.
#
# ## 2. A stopwatch, and this CPU's ceiling
#
# A helper times a function: one call first (which may compile), then the best of a few
# calls. The best, not the mean: on a shared machine the slow calls measure the neighbours.
# `ops.convert_to_numpy` waits for the result, so we time the work and not just its launch.
# Agreement is printed as a bound by `sdlearn.course.at_most`, the power of ten just above the
# largest difference, so the printed text is the same on every run and every CPU (processors
# round floats differently in the last digits).

# %%
def best_time(f, repeats=5):
    """(seconds of the first call, best seconds of ``repeats`` more calls) of f()."""
    start = time.perf_counter()
    f()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return first, min(times)


def matmul_rate(dtype="float32", n=1024, repeats=5):
    """FLOP/s of an (n, n) x (n, n) matrix product in ``dtype``: 2 n^3 FLOP."""
    a, b = (ops.cast(keras.random.normal((n, n), seed=i), dtype) for i in (1, 2))

    def product():  # fetching one value waits for the whole product; numpy has no bfloat16
        return ops.convert_to_numpy(ops.cast(ops.matmul(a, b)[0, 0], "float32"))

    _, best = best_time(product, repeats)
    return 2 * n**3 / best


# %% tags=["nbval-ignore-output"]
rate = matmul_rate()
print(f"float32 matmul, 1024 x 1024: {rate / 1e9:.0f} GFLOP/s on this machine "
      f"({os.cpu_count()} CPU cores), now")

# %% [markdown]
# ## 3. XLA: compile the whole model into one program
#
# Keras can run a model three ways on the TensorFlow backend:
#
# - **eager**: Python calls each operation in turn; each is dispatched on its own and writes
#   its result to memory before the next one starts. Calling the model, `unet(inputs)`, does
#   this.
# - **graph** (`compile(jit_compile=False)`, then `predict_on_batch`): the model is traced
#   once into a TensorFlow graph that a C++ runtime executes, still op by op, but without
#   Python in between.
# - **XLA** (`jit_compile=True`, sdlearn's default): the graph is compiled by XLA into one
#   program. The convolutions and matrix multiplies stay calls into tuned libraries, but
#   chains of cheap operations between them, such as GroupNorm's scale and shift, then swish,
#   then adding the timestep's projection, become ONE loop over the activations instead of
#   one pass over memory each; constant work is folded away; buffers are reused.
#
# Why fusion matters: at SD's first level a batch-2 activation is
# $2 \times 64 \times 64 \times 320$ float32 values, 10.5 MB. Five elementwise operations in
# a row read and write it five times each (105 MB of traffic); fused, it is read once and
# written once (21 MB). The FLOPs do not change; the traffic and the per-operation overhead do.
# `StableDiffusion` compiles each of its models this way:

# %%
show_source(StableDiffusion.__init__)

# %% [markdown]
# We build the tiny model's UNet with random weights and give it a batch of 2 (the guided
# batch of one image): random latents, two timesteps, random "text" contexts.

# %%
# ~2-3 s on a 2-core CPU: building the UNet (random weights)
keras.utils.set_random_seed(0)
unet = UNet(TINY.unet)
rng = np.random.default_rng(0)
side = TINY.image_size // 8  # 8x8 latents
inputs = [rng.standard_normal((2, side, side, 4)).astype("float32"),
          np.array([999.0, 500.0], "float32"),
          rng.standard_normal((2, 77, TINY.unet.context_dim)).astype("float32")]
print(f"tiny UNet, random weights: {unet.count_params():,} parameters; a call of batch 2 is "
      f"{2 * tiny_flops / 1e6:.0f} MFLOP")

# %% [markdown]
# **Predict, then run.** At the matmul rate you measured above, how long *should* one call of
# 114 MFLOP take? Write it down, then run the next two cells.
#
# First, agreement: the graph and the XLA program must compute what the eager model computes.

# %%
# 10-45 s on a 2-core CPU: a second UNet with the same weights as a graph; XLA (batch 2)
eager = ops.convert_to_numpy(unet(inputs))
graph_unet = UNet(TINY.unet)
graph_unet.set_weights(unet.get_weights())
graph_unet.compile(jit_compile=False)
start = time.perf_counter()
graph = graph_unet.predict_on_batch(inputs)
graph_first = time.perf_counter() - start
unet.compile(jit_compile=True)
start = time.perf_counter()
xla = unet.predict_on_batch(inputs)
xla_first = time.perf_counter() - start
print(f"output {eager.shape}, standard deviation {eager.std():.2f}")
print(f"max |graph - eager| {at_most(np.abs(graph - eager).max())}")
print(f"max |XLA - eager|   {at_most(np.abs(xla - eager).max())}")

# %% [markdown]
# Agreement to float32 rounding: XLA reorders and fuses sums, which moves the last bits, no
# more. Now the times.

# %% tags=["nbval-ignore-output"]
# ~1-10 s on a 2-core CPU
_, eager_s = best_time(lambda: ops.convert_to_numpy(unet(inputs)), repeats=3)
_, graph_s = best_time(lambda: graph_unet.predict_on_batch(inputs), repeats=10)
_, xla_s = best_time(lambda: unet.predict_on_batch(inputs), repeats=10)
mode_times = {"eager": eager_s, "graph": graph_s, "XLA": xla_s}
print(f"first call (trace or compile): graph {graph_first:.1f} s, XLA {xla_first:.1f} s")
for mode, seconds in mode_times.items():
    print(f"{mode:>6}: {seconds * 1e3:7.1f} ms per call, {2 * tiny_flops / seconds / 1e9:5.2f} "
          f"GFLOP/s = {2 * tiny_flops / seconds / rate:.1%} of the matmul rate")
print(f"the arithmetic alone at the matmul rate: {2 * tiny_flops / rate * 1e3:.1f} ms")

# %% [markdown]
# For the tiny model, the arithmetic is a few milliseconds at most; the rest is overhead. Eager
# pays for every one of the few hundred operations from Python; the graph removes Python,
# XLA also removes most of the separate operations. The first XLA call pays for compiling
# (seconds), so XLA wins only when a model is called many times at the same shapes, which a
# sampling loop does. At full size it is the other way round: a 512 px call is 0.8 TFLOP, two
# to six seconds of arithmetic on this course's CPUs, and the same overhead is a few percent
# (section 9).
#
# ## 4. Guidance: one call of $2B$, not two calls of $B$
#
# Classifier-free guidance needs $\epsilon_\theta(x_t, t, c)$ and
# $\epsilon_\theta(x_t, t, \varnothing)$. KerasCV calls the UNet twice with batch $B$;
# `sampler.guided_noise` stacks the two into one batch of $2B$:

# %%
show_source(sampler.guided_noise)

# %% [markdown]
# The arithmetic is identical: $2B$ images through the UNet either way. What differs is what
# each call costs besides arithmetic. Model a call of batch $B$ as
#
# $$t(B) \approx t_0 + B\,\frac{F}{R},$$
#
# a fixed cost $t_0$ (launching the program, every layer's kernels, moving inputs and
# outputs) plus the FLOPs $F$ per image at rate $R$. Two calls cost $2t_0 + 2BF/R$, one call
# of $2B$ costs $t_0 + 2BF/R$: batching saves $t_0$ per step. On a GPU there is a second gain:
# a batch of 1 at 256 px cannot keep thousands of cores busy, so $R$ itself grows with the
# batch. To measure KerasCV's way with the same code, `sdlearn.fast` splits the stacked
# batch back into two calls:

# %%
show_source(fast.guidance_in_two_calls)

# %% [markdown]
# We measure both ways on the graph UNet of section 3: a call of batch 1 is a new input shape,
# which the graph traces again in a few seconds, where XLA would compile a second program for
# tens of seconds. The overhead $t_0$ that batching saves is there in both modes.

# %%
# ~2-5 s on a 2-core CPU: the graph UNet traces again, for batch 1
latent = inputs[0][:1]
context, unconditional = inputs[2][:1], inputs[2][1:]  # random stand-ins for two prompts
one_call = sampler.guided_noise(graph_unet.predict_on_batch, latent, 500, context,
                                unconditional, 7.5)
two_calls = sampler.guided_noise(fast.guidance_in_two_calls(graph_unet.predict_on_batch),
                                 latent, 500, context, unconditional, 7.5)
print(f"guided eps {tuple(one_call.shape)}, scale 7.5: "
      f"max |two calls - one call| {at_most(np.abs(two_calls - one_call).max())}")

# %% tags=["nbval-ignore-output"]
guidance_times = {
    "one call of 2": best_time(lambda: ops.convert_to_numpy(sampler.guided_noise(
        graph_unet.predict_on_batch, latent, 500, context, unconditional, 7.5)), 10)[1],
    "two calls of 1": best_time(lambda: ops.convert_to_numpy(sampler.guided_noise(
        fast.guidance_in_two_calls(graph_unet.predict_on_batch), latent, 500, context,
        unconditional, 7.5)), 10)[1]}
for name, seconds in guidance_times.items():
    print(f"{name:>15}: {seconds * 1e3:.1f} ms per guided prediction")
saved = 1 - guidance_times["one call of 2"] / guidance_times["two calls of 1"]
print(f"saved by batching: {saved:.0%}")

# %% [markdown]
# The same numbers to float32 rounding (a matrix multiply blocks a batch of 2 differently from a
# batch of 1, and guidance multiplies the difference by up to $2s + 1$). For the tiny model,
# where $t_0$ is most of a call, batching saved between a quarter and three quarters in the
# runs made for this chapter (on a shared machine a slow neighbour can inflate either side).
# For SD v1 at 256 px on the Zen 3 CPU the A/B measurement in section 9 found 6%: $t_0$ is
# small next to 3 seconds of arithmetic.
#
# ## 5. The whole loop as one program
#
# Even with an XLA-compiled UNet, `sampler.sample` is a Python loop: each step calls the
# compiled UNet, gets the result back, and runs the guidance and DDIM update
# ($x_{t_{i+1}} = \sqrt{\bar\alpha_{i+1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{i+1}}\,\epsilon$) as
# separate small operations. `fast.CompiledDDIM` makes the loop itself an operation,
# `keras.ops.fori_loop`, over tables of timesteps and noise levels fixed at construction, so
# XLA compiles all steps into one program. Its body calls the readable path's own
# `guided_noise` and `ddim_step`:

# %%
show_source(fast.CompiledDDIM)

# %%
# 5-50 s on a 2-core CPU: compiling the 10-step loop (once)
noise = rng.standard_normal((1, side, side, 4)).astype("float32")
loops = {}  # keeps the compiled loop for the timing below
python_loop = sampler.sample(unet.predict_on_batch, noise, context, unconditional, 10, 7.5)
start = time.perf_counter()
compiled = fast.sample(unet, noise, context, unconditional, 10, 7.5, loops=loops)
loop_compile_s = time.perf_counter() - start
print(f"10 guided DDIM steps, latent {tuple(compiled.shape)}: "
      f"max |compiled loop - Python loop| {at_most(np.abs(compiled - python_loop).max())}")

# %% tags=["nbval-ignore-output"]
_, python_s = best_time(lambda: ops.convert_to_numpy(sampler.sample(
    unet.predict_on_batch, noise, context, unconditional, 10, 7.5)), 3)
_, compiled_s = best_time(lambda: fast.sample(unet, noise, context, unconditional, 10, 7.5,
                                              loops=loops), 3)
print(f"compiling the loop: {loop_compile_s:.1f} s (once per num_steps, scale, start step)")
print(f"Python loop:   {python_s * 1e3:6.1f} ms for 10 steps")
print(f"compiled loop: {compiled_s * 1e3:6.1f} ms for 10 steps "
      f"({python_s / compiled_s:.1f}x faster)")
loop_times = {"Python loop": python_s / 10, "compiled loop": compiled_s / 10}

# %% [markdown]
# The price: no callback between steps (chapter 5's filmstrips need one), and a new program
# to compile for each number of steps, guidance scale or start step. For the tiny model the
# loop's overhead is a large share of each step; at full size on a CPU it is milliseconds
# between steps of seconds. On a GPU, where a step takes tens of milliseconds and every return
# to Python stalls the device, it is worth more.
#
# ## 6. Half precision: bfloat16 and float16
#
# A float32 number has 1 sign bit, 8 exponent bits and 23 stored mantissa bits. The two
# 16-bit formats split their bits differently:
#
# | format | exponent bits | stored mantissa bits | gap above 1.0 | largest finite |
# |---|---:|---:|---:|---:|
# | float32 | 8 | 23 | $2^{-23} \approx 1.2\times10^{-7}$ | $3.4\times10^{38}$ |
# | bfloat16 | 8 | 7 | $2^{-7} \approx 0.0078$ | $3.4\times10^{38}$ |
# | float16 | 5 | 10 | $2^{-10} \approx 0.00098$ | 65504 |
#
# bfloat16 keeps float32's range with 2 to 3 significant digits; float16 keeps 3 digits but
# overflows above 65504. What half precision buys: half the bytes to move, and on GPUs with
# tensor cores matrix multiplies an order of magnitude faster (an H100: about 67 TFLOP/s in
# float32, 989 in bfloat16, dense). What it costs: rounding.

# %%
values = np.array([1 / 3, 1 + 2**-9, 1000.7, 70000.0, 1e-8], "float32")
print(f"{'float32':>14} {'bfloat16':>14} {'float16':>14}")
half = {d: ops.convert_to_numpy(ops.cast(ops.cast(values, d), "float32"))
        for d in ("bfloat16", "float16")}
for i, v in enumerate(values):
    print(f"{v:14.8g} {half['bfloat16'][i]:14.8g} {half['float16'][i]:14.8g}")

# %% [markdown]
# $1 + 2^{-9}$ falls between two bfloat16 numbers and rounds back to 1; 70000 overflows
# float16; $10^{-8}$ underflows it. So Keras's **mixed** policies keep the weights in float32
# (the same `.h5` files load) and compute each layer in 16 bits, and sdlearn's normalisations
# and attention softmax upcast to float32, since a mean over 4096 pixels or a sum over 4096
# keys loses too many digits in 16 bits. The policy is chosen when a model is built:

# %%
show_source(fast.dtype_policy)

# %%
# ~5-8 s on a 2-core CPU: two more UNets (random weights, copied from the float32 one), eager calls
half_error = {}
for policy in ("mixed_bfloat16", "mixed_float16"):
    with fast.dtype_policy(policy):
        half_unet = UNet(TINY.unet)
    half_unet.set_weights(unet.get_weights())
    out = ops.convert_to_numpy(ops.cast(half_unet(inputs), "float32"))
    half_error[policy] = np.abs(out - eager).max() / eager.std()
    print(f"{policy:>15}: layers compute in {half_unet.layers[-1].compute_dtype}, weights stay "
          f"{half_unet.layers[-1].kernel.dtype}; max |error| {at_most(half_error[policy])} of the "
          "output's standard deviation")

# %% [markdown]
# Under a tenth of the output's scale in bfloat16 (0.05 to 0.07 on the two CPUs this chapter
# ran on), ten times less in float16: float16 keeps 3 more mantissa bits ($2^3 = 8$), as the
# format table predicts. `tests/test_fast.py` holds them under 0.1 (bfloat16) and 0.02
# (float16) of the output's scale; over 50 sampling steps they change the details of a
# picture, not what it shows.
#
# **Predict, then run.** Whether half precision is faster on a CPU depends on the CPU. The
# AMD Zen 3 this course was first measured on has AVX2 and F16C: it can *convert* between
# float16 and float32 in hardware, but has no instruction that multiplies bfloat16 or float16
# numbers. Zen 5, its machine since December 2026, adds AVX-512 BF16, whose instructions
# multiply pairs of bfloat16 numbers and add them into float32; it has no float16 arithmetic
# either. Will a half-precision matrix multiply be faster on each, as fast, or slower? The
# cell prints whether the CPU it runs on has the BF16 instructions.

# %% tags=["nbval-ignore-output"]
# ~0.2-10 s on a 2-core CPU (bfloat16 matmuls are fast where the CPU has AVX-512 BF16)
cpuinfo = Path("/proc/cpuinfo")  # Linux only
flags = cpuinfo.read_text() if cpuinfo.exists() else ""
print("this CPU has AVX-512 BF16:", "yes" if "avx512_bf16" in flags else "no (or not Linux)")
dtype_rates = {d: matmul_rate(d, repeats=3) for d in ("float32", "bfloat16", "float16")}
for d, r in dtype_rates.items():
    print(f"{d:>9} matmul 1024 x 1024: {r / 1e9:6.1f} GFLOP/s "
          f"({r / dtype_rates['float32']:.2f}x float32)")

# %% [markdown]
# On Zen 5 (the run committed here) bfloat16 multiplied at 1.9x float32's rate and float16 at
# 0.9x: each BF16 instruction does twice the multiply-adds of a float32 one, while float16,
# with no arithmetic of its own, is widened to float32 and pays for the conversions too. On
# Zen 3, with neither, both half formats ran at between half and the whole of float32's rate.
# A faster matmul is not yet a faster model: `benchmarks/benchmark.py` on the same Zen 5 timed
# sdlearn's guided 256 px step at 1.03 s in float32 and 1.31 s with `mixed_bfloat16`
# (`benchmarks/RESULTS.md`); its convolutions, normalisations and the casts between them did
# not gain what one large matmul gains. On these CPUs keep float32; the half-precision
# switches exist for the GPU.
#
# ## 7. Attention: in blocks, and fused
#
# sdlearn's attention writes out what chapter 3 explained: the scores
# $S = QK^\top/\sqrt d$, a softmax over each row, then $SV$. One setting,
# `sdlearn.layers.ATTENTION`, chooses how that is computed: `"einsum"`, as written, all heads
# at once (what chapters 2 and 3 read and plot); `"blocked"`, the same einsums one head and one
# block of queries at a time (the default); `"fused"`, the backend's own kernel:

# %%
show_source(layers.attention)

# %% [markdown]
# The einsum version materialises $S$, a $(B, h, T_q, T_k)$ tensor. At SD's first level
# that is big:

# %%
print("SD v1, 512 px, one image with guidance (batch 2), 8 heads: self-attention scores")
for s in (64, 32, 16):
    tokens = s * s
    values = 2 * 8 * tokens**2
    print(f"  {s}x{s} latent level, T = {tokens:>4}: {values:>11,} values = "
          f"{4 * values / 2**20:7.1f} MiB in float32, {2 * values / 2**20:6.1f} MiB in 16 bits")

# %% [markdown]
# A gigabyte at 64x64, in each of the five transformers there, at every step, and not just
# written once: the softmax reads the scores for each row's maximum, again for the sum of
# the exponentials, writes the probabilities, and the second einsum reads those back. A
# gigabyte is about 60 times the cache one core of this course's CPUs can use (0.5 MB of L2
# on Zen 3, 1 MB on Zen 5, and its half of a 32 MB L3), so every one of those passes goes to
# main memory, and the cores wait for it.
#
# ### Blocked: the same einsums, in pieces that fit in the cache
#
# Row $i$ of $S$ involves query $i$ and all the keys, and nothing else: the rows can be
# computed in any grouping. `blocked_attention` runs `einsum_attention` on one head and `rows`
# queries at a time, a loop (`keras.ops.map`) that XLA compiles into one program. With 256
# queries against 4096 keys a block of scores is $256 \times 4096 \times 4$ bytes = 4 MB:
# it is still in the cache when the softmax comes back to it, and when the second einsum
# reads it.

# %%
show_source(layers.blocked_attention)
show_source(layers.query_block)
for name, (tq, tk) in {"64x64 self": (4096, 4096), "64x64 cross": (4096, 77),
                       "32x32 self": (1024, 1024), "16x16 self": (256, 256),
                       "tiny model, 8x8 self": (64, 64)}.items():
    print(f"{name:>21}: query_block({tq}, {tk}) = {layers.query_block(tq, tk)}")


# %% [markdown]
# Nothing else changes: each score is the same dot product, each row's softmax the same sum
# over the same keys, so the result is the same, not just close. The tiny model's attention is
# small enough whole (`query_block` is None), so chapters 0 to 7 never took this path. To see
# it work we compile the three kernels on the attention of SD's 32x32 level (batch 2, 1024 pixels,
# 8 heads of 80): a model of one operation, compiled with XLA like the UNet in section 3.

# %%
class Attention(keras.Model):
    """One attention call as a Keras model, so that it compiles like the UNet."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def call(self, qkv):
        return layers.attention(*qkv, kernel=self.kernel)


# ~10 s and ~0.3 GB on a 2-core CPU: three compilations, then timed calls
qkv = [rng.standard_normal((2, 1024, 8, 80)).astype("float32") for _ in range(3)]
attention_models = {kernel: Attention(kernel) for kernel in layers.ATTENTION_KERNELS}
attention_out = {}
for kernel, model in attention_models.items():
    model.compile(jit_compile=True)
    attention_out[kernel] = model.predict_on_batch(qkv)
for kernel in ("blocked", "fused"):
    print(f"{kernel} vs einsum, compiled: max |difference| "
          f"{at_most(np.abs(attention_out[kernel] - attention_out['einsum']).max())}")

# %% tags=["nbval-ignore-output"]
attention_times = {kernel: best_time(lambda m=model: m.predict_on_batch(qkv), 5)[1]
                   for kernel, model in attention_models.items()}
for kernel, seconds in attention_times.items():
    print(f"{kernel:>8}: {seconds * 1e3:5.1f} ms")

# %% [markdown]
# `benchmarks/attention.py` times the three kernels on every attention shape of a 512 px step,
# including the 64x64 level that is too heavy to run here (2 GB of scores, seconds per call).
# Its run for `benchmarks/RESULTS.md`, made on the Zen 3 machine:

# %%
results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
attention_section = results.split("### Attention kernels")[1].split("\n#")[0]
print(attention_section.split("\n", 1)[1].strip())  # without the rest of the heading line


# %% [markdown]
# ### Fused: never write the scores at all
#
# A fused ("flash") kernel (Dao et al., 2022) goes further: it never writes $S$, not even a
# block of it. It walks over the keys in blocks, keeping for each query a running maximum
# $m$, a running sum $\ell$ of the exponentials and a running output $o$. When a block of
# scores $s_j$ arrives,
#
# $$m' = \max(m, \max_j s_j), \qquad
#   \ell' = \ell\, e^{m - m'} + \sum_j e^{s_j - m'}, \qquad
#   o' = o\, e^{m - m'} + \sum_j e^{s_j - m'} v_j ,$$
#
# and at the end $o / \ell$ is exactly $\operatorname{softmax}(s)\,V$. Subtracting the
# running maximum keeps the exponentials from overflowing; rescaling by $e^{m - m'}$ corrects
# what was summed before the maximum grew. Here is that recurrence in numpy for one head,
# checked against sdlearn's attention (an illustration; the real kernels tile queries too and
# keep the blocks in on-chip memory):

# %%
def blockwise_attention(q, k, v, block=64):
    """softmax(q k^T / sqrt(d)) v for one head, q (Tq, d), k and v (Tk, d), keys in blocks."""
    m = np.full(len(q), -np.inf)  # running max of each query's scores
    total = np.zeros(len(q))  # running sum of exp(score - m)
    out = np.zeros_like(q)  # running sum of exp(score - m) v
    for j in range(0, len(k), block):
        s = q @ k[j:j + block].T / np.sqrt(q.shape[-1])  # (Tq, block): never (Tq, Tk)
        m_new = np.maximum(m, s.max(axis=1))
        p = np.exp(s - m_new[:, None])
        total = total * np.exp(m - m_new) + p.sum(axis=1)
        out = out * np.exp(m - m_new)[:, None] + p @ v[j:j + block]
        m = m_new
    return out / total[:, None]


q, k, v = (rng.standard_normal((256, 40)) for _ in range(3))
full = ops.convert_to_numpy(layers.attention(*(x[None, :, None, :].astype("float32")
                                               for x in (q, k, v))))[0, :, 0]
print(f"blocks of 64 keys vs the full softmax: max |difference| "
      f"{at_most(np.abs(blockwise_attention(q, k, v) - full).max())}")

# %% [markdown]
# The FLOPs are the same; the memory needed drops from $O(T^2)$ to $O(T d)$ per head. On a GPU
# under JAX, `keras.ops.dot_product_attention` runs cuDNN's fused kernel; under PyTorch, SDPA.
# The TensorFlow backend used here has no fused kernel: it computes the same einsums and
# softmax, all heads at once, which is why `"fused"` timed like `"einsum"` above. On a GPU the
# blocked loop is the wrong choice (it runs the blocks one after another on a chip made to run
# thousands of things at once): there, use `"fused"`. The switch in a whole model, the tiny
# UNet in eager mode (which reads `ATTENTION` at every call):

# %%
layers.ATTENTION = "fused"
try:
    fused_unet = ops.convert_to_numpy(unet(inputs))
finally:
    layers.ATTENTION = "blocked"
print('tiny UNet, ATTENTION = "fused": max |difference| '
      f"{at_most(np.abs(fused_unet - eager).max())}")

# %% [markdown]
# ## 8. Convolutions: the same outputs from fewer multiplies
#
# Every fast path so far removed time *between* the multiplies; the multiplies themselves, the
# FLOPs of section 1, were the floor. Yet a convolution can be computed with fewer multiplies
# than its definition uses. Winograd's minimal filtering (Winograd, 1980; brought to neural
# networks by Lavin & Gray, 2016), in one dimension, $F(2, 3)$: two outputs of a 3-tap filter
# $g$ over four inputs $d$ take six multiplies as written,
#
# $$y_0 = d_0 g_0 + d_1 g_1 + d_2 g_2, \qquad y_1 = d_1 g_0 + d_2 g_1 + d_3 g_2,$$
#
# and four this way:
#
# $$m_1 = (d_0 - d_2)\, g_0, \quad m_2 = (d_1 + d_2)\, \tfrac{g_0 + g_1 + g_2}{2}, \quad
#   m_3 = (d_2 - d_1)\, \tfrac{g_0 - g_1 + g_2}{2}, \quad m_4 = (d_1 - d_3)\, g_2,$$
#
# $$y_0 = m_1 + m_2 + m_3, \qquad y_1 = m_2 - m_3 - m_4 .$$
#
# The filter's combinations are made once per filter, not once per output: per pair of outputs
# what is left is four multiplies and some additions. (Expand $m_2 + m_3$: the $d_1 g_1$ terms
# cancel and $d_2 g_1$ survives, as $y_0$ needs.) Checked in numpy, first as written, then in
# the matrix form $y = A^\top [(G g) \odot (B^\top d)]$ with the constant matrices that
# `sdlearn.layers` keeps ($\odot$: elementwise):

# %%
wrng = np.random.default_rng(8)
d, g = wrng.standard_normal(4), wrng.standard_normal(3)
direct = np.array([d[0:3] @ g, d[1:4] @ g])  # 6 multiplies
m = [(d[0] - d[2]) * g[0], (d[1] + d[2]) * (g[0] + g[1] + g[2]) / 2,
     (d[2] - d[1]) * (g[0] - g[1] + g[2]) / 2, (d[1] - d[3]) * g[2]]  # 4 multiplies
print(f"F(2, 3), four products: max |difference| "
      f"{at_most(np.abs([m[0] + m[1] + m[2], m[1] - m[2] - m[3]] - direct).max())}")
BT, G, AT = (np.array(M) for M in (layers.WINOGRAD_BT, layers.WINOGRAD_G, layers.WINOGRAD_AT))
print(f"A^T [(G g) * (B^T d)]:   max |difference| "
      f"{at_most(np.abs(AT @ ((G @ g) * (BT @ d)) - direct).max())}")

# %% [markdown]
# Applied along the rows and then along the columns it becomes $F(2{\times}2, 3{\times}3)$: a
# $4 \times 4$ tile $d$ of the image gives a $2 \times 2$ block of outputs,
#
# $$Y = A^\top \left[ (G g G^\top) \odot (B^\top d B) \right] A ,$$
#
# with 16 multiplies instead of $4 \times 9 = 36$: 4/9 of the arithmetic. In a layer with
# $C_{in}$ input and $C_{out}$ output channels, each of the 16 elementwise products becomes a
# sum over $C_{in}$, so the multiplies are 16 matrix products of (tiles, $C_{in}$) by
# ($C_{in}$, $C_{out}$), one tile per 2x2 block, where the direct convolution does 9 of
# (pixels, $C_{in}$) by ($C_{in}$, $C_{out}$). The transforms $B^\top d B$ and
# $A^\top \cdot A$ are additions (their entries are 0 and $\pm 1$) and $G g G^\top$ is made
# once per call for the whole kernel. sdlearn writes them as sums of slices, which XLA fuses
# into single passes over memory, and the 16 products as one batched product (an einsum over
# the stacked tiles: fewer, larger operations for XLA to compile, section 9 says why):

# %%
show_source(layers.winograd_conv)

# %% [markdown]
# The switch is `sdlearn.layers.CONVOLUTION = "winograd"` (`"direct"`, Keras's own
# convolution, is the default), read when a model is traced, like `ATTENTION`. sdlearn's
# `Conv2D` is Keras's with one method replaced, and takes the new path where it applies (and
# where one image's transformed tiles fit `WINOGRAD_MAX_TILES`: the memory below):

# %%
show_source(layers.Conv2D)

# %% [markdown]
# Why is it not the default? The numbers are the same only to float32 rounding: the
# transforms add and subtract before they multiply, so the roundings differ, by about $10^{-6}$
# of the values, where every other CPU path of this chapter is exact or nearly. And it costs
# memory: the transformed tiles and the 16 products are each four times the size of the
# image they come from, and the transformed kernels are 16/9 of the kernels; the direct
# convolution needs no such copies (at full size, RESULTS.md measures what each costs and how
# much of it sdlearn takes back). The check and a timing on one convolution of SD's 32x32
# level at 256 px (batch 2, 320 channels in and out), both compiled with XLA, with the same
# layer, so the same kernel:

# %%
# ~10 s on a 2-core CPU: two compilations of one convolution
x32 = wrng.standard_normal((2, 32, 32, 320)).astype("float32")
keras.utils.set_random_seed(8)  # the kernel's initial values
conv_layer = layers.conv(320, 3)
conv_models, conv_out = {}, {}
for name in layers.CONVOLUTIONS:
    layers.CONVOLUTION = name  # read when the model is traced: at its first call
    conv_models[name] = keras.Sequential([conv_layer])
    conv_models[name].compile(jit_compile=True)
    conv_out[name] = conv_models[name].predict_on_batch(x32)
layers.CONVOLUTION = "direct"
difference = np.abs(conv_out["winograd"] - conv_out["direct"]).max()
relative = difference / np.abs(conv_out["direct"]).max()  # ~1e-6: float32 rounding
print(f"winograd vs direct, compiled: max |difference| is {'below' if relative < 1e-5 else 'ABOVE'}"
      " 1e-5 of the largest output")

# %% tags=["nbval-ignore-output"]
direct_flops = 2 * 2 * 32 * 32 * 9 * 320 * 320  # counted as the direct convolution
for name, model in conv_models.items():
    seconds = best_time(lambda m=model: m.predict_on_batch(x32), 5)[1]
    print(f"{name:>8}: {seconds * 1e3:5.1f} ms = {direct_flops / seconds / 1e9:4.0f} GFLOP/s, "
          f"counting the direct convolution's {direct_flops / 1e9:.2f} GFLOP")
print(f"(the float32 matmul of section 2, measured again now: {matmul_rate() / 1e9:.0f} GFLOP/s)")

# %% [markdown]
# Counted with the direct convolution's FLOPs, as every table of this chapter counts them, the
# Winograd convolution reaches a rate the direct one cannot (in the run committed here, above the
# matmul rate itself): the multiply units are not busier, there is less to multiply. The tiny
# model could take this path too (its convolutions are 3x3 on even sides), but it is all overhead
# (section 3), so the chapters before this one keep the direct convolution, which is also what
# KerasCV computes. At full size `benchmarks/benchmark.py` has the switch as the implementation
# `sdlearn-winograd`; its run on the Zen 4, beside the default sdlearn, KerasCV and diffusers, from
# `benchmarks/RESULTS.md`:

# %%
winograd_section = results.split("### Winograd's convolutions at full size")[1].split("\n#")[0]
print(winograd_section.split("\n", 1)[1].strip())


# %% [markdown]
# ### Upsampling: the copy folded into the convolution
#
# The UNet and the decoder double an image's sides by copying each pixel into a 2x2 block and
# smoothing with a 3x3 convolution (chapter 3). Three of the nine pixels that such a
# convolution reads are always copies of one another. Along one axis: output $2i$ reads the
# copied pixels $2i-1, 2i, 2i+1$, which are the small image's $x_{i-1}, x_i, x_i$; output
# $2i+1$ reads $x_i, x_i, x_{i+1}$. So, with taps $k_0, k_1, k_2$,
#
# $$y_{2i} = k_0 x_{i-1} + (k_1 + k_2)\, x_i, \qquad y_{2i+1} = (k_0 + k_1)\, x_i + k_2 x_{i+1}:$$
#
# two taps instead of three, on the small image. In two dimensions each of the four positions
# in a 2x2 block gets its own 2x2 kernel, made from the 3x3 one by these sums along the rows
# and then the columns: 4 x 4 = 16 multiplies per pixel of the small image instead of the
# 4 x 9 = 36 that the convolution of the copy does. This is not an approximation; the
# numbers differ from the copy's only by float32 rounding (the taps are added before they
# multiply). And the copy, four times the size of the image, is never made. In numpy, along one
# axis:

# %%
x1, k1 = wrng.standard_normal(6), wrng.standard_normal(3)
copy = np.pad(np.repeat(x1, 2), 1)  # the 2x copy, zero-padded for a "same" convolution
by_copy = np.array([copy[j:j + 3] @ k1 for j in range(12)])  # 3 multiplies per output
padded = np.pad(x1, 1)  # x_{-1} = x_6 = 0
even = k1[0] * padded[:-2] + (k1[1] + k1[2]) * padded[1:-1]  # y_{2i}: 2 multiplies
odd = (k1[0] + k1[1]) * padded[1:-1] + k1[2] * padded[2:]  # y_{2i+1}: 2 multiplies
folded_1d = np.stack([even, odd], axis=1).reshape(-1)  # interleave: y_0, y_1, y_2, ...
print(f"folded vs copy then convolve, 12 outputs: max |difference| "
      f"{at_most(np.abs(folded_1d - by_copy).max())}")

# %% [markdown]
# sdlearn's version, for images and channels: `fold` makes the taps, `folded_upsample_conv`
# runs the four 2x2 convolutions and interleaves their outputs, and the switch
# `sdlearn.layers.UPSAMPLING = "folded"` (`"copy"`, SD's definition, is the default) chooses
# it inside the `Upsample` layer, which keeps the copy and the convolution as its two layers,
# so the published weights load the same either way:

# %%
show_source(layers.folded_upsample_conv)

# %%
show_source(layers.Upsample)

# %% [markdown]
# The check and a timing, on the UNet's last upsampling at 256 px (batch 2, 16x16 to 32x32,
# 640 channels), both compiled by XLA, with the same layer and so the same kernel:

# %%
# ~15 s on a 2-core CPU: two compilations of one upsampling
x16 = wrng.standard_normal((2, 16, 16, 640)).astype("float32")
keras.utils.set_random_seed(9)  # the kernel's initial values
up_layer = layers.upsample(640)
up_models, up_out = {}, {}
for name in layers.UPSAMPLINGS:
    layers.UPSAMPLING = name  # read when the model is traced: at its first call
    up_models[name] = keras.Sequential([up_layer])
    up_models[name].compile(jit_compile=True)
    up_out[name] = up_models[name].predict_on_batch(x16)
layers.UPSAMPLING = "copy"
relative = np.abs(up_out["folded"] - up_out["copy"]).max() / np.abs(up_out["copy"]).max()
print(f"folded vs copy, compiled: max |difference| is {'below' if relative < 1e-5 else 'ABOVE'}"
      " 1e-5 of the largest output")

# %% tags=["nbval-ignore-output"]
up_flops = 2 * 2 * 32 * 32 * 9 * 640 * 640  # counted as the convolution of the copy
for name, model in up_models.items():
    seconds = best_time(lambda m=model: m.predict_on_batch(x16), 5)[1]
    print(f"{name:>6}: {seconds * 1e3:5.1f} ms = {up_flops / seconds / 1e9:4.0f} GFLOP/s, "
          f"counting the copy's convolution, {up_flops / 1e9:.2f} GFLOP")
print(f"(the float32 matmul of section 2, measured again now: {matmul_rate() / 1e9:.0f} GFLOP/s)")

# %% [markdown]
# How much of SD v1's arithmetic is in upsamplings, counted on the copy as everywhere in this
# chapter (folding saves 5/9 of it):

# %%
# The UNet's upsamplings at 512 px: 8 -> 16 and 16 -> 32 with 1280 channels, 32 -> 64 with 640;
# the decoder's: to 128 and 256 px with 512 channels, to 512 px with 256.
unet_up = sum(2 * s * s * 9 * c * c for s, c in ((16, 1280), (32, 1280), (64, 640)))
decoder_up = sum(2 * s * s * 9 * c * c for s, c in ((128, 512), (256, 512), (512, 256)))
for model, up, total in (("UNet call", unet_up, sum(unet_flops(SD_V1.unet, 64).values())),
                         ("decoder", decoder_up, benchmark.DECODER_FLOP[512])):
    print(f"512 px {model}: upsamplings {up / 1e9:4.0f} of {total / 1e9:4.0f} GFLOP "
          f"({up / total:.0%}); folded, they save {5 / 9 * up / total:.0%} of the model's count")

# %% [markdown]
# `benchmarks/benchmark.py` has the switch as `sdlearn-folded`, and both switches together as
# `sdlearn-folded-winograd`. Their runs on the Zen 4, from `benchmarks/RESULTS.md`:

# %%
folded_section = results.split("### Folded upsampling at full size")[1].split("\n#")[0]
print(folded_section.split("\n", 1)[1].strip())


# %% [markdown]
# ## All the measured times of this notebook
#
# Per call of the tiny UNet (batch 2), per guided prediction, and per sampling step, on this
# machine, as the cells above measured them (a log scale: they span two orders of magnitude):

# %% tags=["nbval-ignore-output"]
measured = {f"UNet call, {m}": t for m, t in mode_times.items()}
measured.update({f"guidance (graph), {m}": t for m, t in guidance_times.items()})
measured.update({f"DDIM step, {m}": t for m, t in loop_times.items()})
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.barh(list(measured), [t * 1e3 for t in measured.values()],
        color=["tab:blue"] * 3 + ["tab:orange"] * 2 + ["tab:green"] * 2)
ax.axvline(2 * tiny_flops / rate * 1e3, color="k", linestyle="--",
           label="batch-2 UNet arithmetic at the matmul rate")
ax.set_xscale("log")
ax.invert_yaxis()
ax.set_title("Tiny model (random weights) on this CPU: best times")
ax.set_xlabel("milliseconds (log scale)")
ax.set_ylabel("what was timed")
ax.legend(fontsize=8, loc="lower right")
plt.show()


# %% [markdown]
# ## 9. Full size: Stable Diffusion v1 against KerasCV and diffusers
#
# The tiny model is all overhead; the real one is all arithmetic. The measurements at full
# size take minutes here, so they were made once with the scripts in `benchmarks/`, on this
# course's 2-core machine, and written to `benchmarks/RESULTS.md`; we read them from that
# file. First the side-by-side run of `benchmarks/benchmark.py` on the idle Zen 5 (December
# 2026): sdlearn, KerasCV and diffusers (PyTorch), each in its own process, one after the
# other, random weights, float32.

# %%
def table_rows(section):
    """The rows of the first markdown table in ``section``, as lists of cell strings."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    return rows[0], rows[2:]  # the header; rows[1] is the |---| line


side_by_side = results.split("### Side by side")[1].split("\n### ")[0]
_, sbs = table_rows(side_by_side)
print(re.search(r"Command \(([^)]*)", side_by_side).group(1).replace("\n", " "))
columns = [0, 3, 4, 5, 6, 7, 8]  # of RESULTS.md's table, under shorter labels:
labels = ["", "256 px step s", "GFLOP/s (% mm)", "512 px image s", "decode s",
          "GFLOP/s (% mm)", "peak RSS GB"]
print("\n" + " | ".join(f"{label:>14}" for label in labels))
for row in sbs:
    print(" | ".join(f"{row[c]:>14}" for c in columns))
print("(% mm: the share of the float32 matmul rate the same process measured next to it)")
print("\nreproduce with:", re.search(r"\n    (python benchmarks/benchmark\.py[^\n]*)",
                                    side_by_side).group(1))

# %%
generated = [row for row in sbs if row[5]]  # rows timed in the step task only have no image
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 2.8))
implementations = [row[0] for row in generated]
for ax, column, label, title in (
        (left, 5, "seconds per 512 px image (20 steps)", "Time per image"),
        (right, 8, "peak resident memory (GB)", "Peak memory of the generation")):
    values = [float(row[column]) for row in generated]
    bars = ax.barh(implementations, values, color=plt.cm.tab10(range(len(generated))))
    ax.bar_label(bars, [f"{v:g}" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values) * 1.25)
    ax.invert_yaxis()
    ax.set_title(f"SD v1, 2-core CPU, float32: {title.lower()}")
    ax.set_xlabel(label)
    ax.set_ylabel("implementation")
fig.tight_layout()
plt.show()

# %% [markdown]
# sdlearn is the fastest of the three per image (18% faster than KerasCV, 40% faster than
# diffusers) and needs less memory than KerasCV. Its guided 256 px step reaches 72% of the
# matmul rate measured next to it, and its decoder 74%: the project's targets were 85% and
# 75%, so on this CPU the convolutions are further from the matmul's rate than on the Zen 3
# (77% and 87% there, with every time 2-3.5x longer). diffusers' ratios are against PyTorch's
# own matmul, less than half as fast as TensorFlow's here. The same file records the Zen 3
# runs: there, section 7's blocked attention made the 512 px difference (sdlearn 459 s and
# 7.9 GB per image with the einsums, 375 s and 6.5 GB blocked; KerasCV 469 s, diffusers
# 406 s). At 256 px there are 1,024 tokens, not 4,096: the scores are 16 times smaller and
# the arithmetic dominates either way.
#
# One run on one machine is one sample. Every side-by-side run the project has recorded, on the
# four processors its machines have had, is checked against the five CPU targets by
# `benchmarks/runs.py`, from the JSON each run wrote (it reads; it measures nothing):

# %%
import sys

sys.path.insert(0, str(ROOT / "benchmarks"))  # runs.py imports benchmark.py's FLOP counts
import runs  # noqa: E402

recorded = runs.all_cells(sorted((ROOT / "benchmarks").glob("cpu*.json")))
print(f"{'run (JSON)':<48} {'CPU':<22} {'s per 512 px image':<22} {'step, % mm':<22} "
      f"{'decode, % mm':<17} targets met")
for name, cpu, _, image, step, decode, _, met in recorded:
    cpu = re.sub(r"^(AMD|Intel).*\(family (\d+), model (\d+)\)", r"\1 family \2/\3", cpu)
    name = name.replace(".json", "").replace("sdlearn-folded-winograd", "folded+Winograd")
    name = name.replace("(sdlearn-winograd)", "(Winograd)").replace("(sdlearn-folded)", "(folded)")
    print(f"{name:<48} {cpu:<22} {image:<22} {step:<22} {decode:<17} {met}")
print("(each cell: sdlearn / KerasCV / diffusers; AMD 25/1 is Zen 3, 25/17 Zen 4, 26/2 Zen 5; "
      "Intel 6/106 Ice Lake)")

# %% [markdown]
# sdlearn is the fastest per image in every full run but cpu-zen4-winograd (there 1.6% slower
# than diffusers, and in cpu-zen4 faster by only 2%: both inside one run's noise), and its
# decode is at or within a point of 75% everywhere. The guided step is the target it misses: 72-85% in the
# full runs on the AMD machines, 53% on the Intel Ice Lake, where TensorFlow's eager matmul (the
# ceiling) runs through oneDNN and XLA's own matmul reaches 84% of it
# (`benchmarks/matmul_paths.py`; 95% on the Zen 4). Only a step-only run on the Zen 3 went past
# 85%. The rows marked (folded), (Winograd) and (folded+Winograd) are section 8's fast paths in
# the same runs as the rows above them. Folding alone is faster per image at the same memory,
# and still short of 85% in the step. With Winograd's convolutions sdlearn is the fastest per
# image and its step passes 85% by SD's FLOP count (less arithmetic, not busier multipliers),
# but it needed the most memory, the target those rows missed until the last one. Is that XLA's
# schedule, which runs independent operations side by side and may start every kernel's
# transform early? Hardly: with XLA's memory-lean schedule for every Keras row
# (`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`; RESULTS.md, "Is
# Winograd's memory XLA's schedule?") folded+Winograd peaked at 8.85 GB instead of 9.15 and
# KerasCV at 7.57 instead of 7.60. The memory is Winograd's own: tiles, products and transformed
# kernels, and larger programs to compile. Three changes took 1.4 GB of it back (the rows
# cpu-zen4-tile-limit and cpu-zen4-winograd-memory): no Winograd where one image's tiles
# pass `WINOGRAD_MAX_TILES` (the decoder's 128 to 512 px levels), each kernel's transform made
# when its layer's input is ready instead of all at the start, and fewer operations in the
# program. Folded+Winograd then peaked at 7.76 GB, 0.19 GB above KerasCV, and still took 15%
# less time per image:

# %%
memory_section = results.split("### Winograd in less memory")[1].split("\n### ")[0]
print(memory_section.split("\n", 1)[1].strip())

# %% [markdown]
# Where were the last 0.19 GB? Not in the tiles or the products any more: in compiling. A 512 px
# generation peaks at the UNet's first call, where XLA converts the traced model to its HLO,
# optimises it, compiles it to machine code and runs it. `benchmarks/compile_memory.py` takes
# those stages apart (70 s per setting), and Winograd's extra memory was mostly in the
# optimisation: its optimised program was three times the direct one's. Writing each row of a
# transform with subtractions and at most one multiply, the kernel's transform on stacked
# tensors and the 16 products as one batched einsum (the code above) makes it smaller:

# %%
program_section = results.split("### Fewer operations")[1].split("\n## ")[0]
print(program_section.split("\n", 1)[1].strip())

# %% [markdown]
# So on this Zen 4 one configuration meets all five CPU targets, in two runs in two sessions:
# Winograd's convolutions with folded upsampling (cpu-zen4-stacked and cpu-zen4-confirm above),
# the step at 88.9% and 87.7% of the matmul rate, 0.13 and 0.20 GB less peak memory than KerasCV
# and the fastest image of the three. The step's margin over 85% is the thinnest. Neither switch
# is the default: the default sdlearn is SD's definition as KerasCV computes it, and misses the
# step (77-79% on this machine). Memory was won here by making the compiler's work smaller, not
# the arithmetic: the same multiplies, fewer and larger operations.
#
# The side-by-side run times each implementation minutes apart; on a virtual machine the rate
# of the cores drifts by tens of percent in that time (the matmul ranges in RESULTS.md). The
# interleaved A/B below removes that: sdlearn's UNet and KerasCV's, with the same weights,
# both under XLA, taking turns in one process so that both see the same load (measured
# earlier, on the Zen 3, with the einsum attention, on a **shared** machine).

# %%
section = results.split("### Interleaved A/B")[1].split("\n#")[0]
print(section.split("\n\n")[1].replace("\n", " "))  # the conditions, as the file states them
header, ab = table_rows(section)
print()
print(f"{header[0]:<58} {'s':>6} {'GFLOP/s':>8} {'% matmul':>9}")
for name, seconds, gflops, share in ab:
    print(f"{name:<58} {seconds:>6} {gflops:>8} {share:>9}")
command = re.search(r"Command: `([^`]+)`", section).group(1)
print(f"\nreproduce with: {command}")

# %%
names = [r[0].replace(" (TF eager)", "") for r in ab]
seconds = [float(r[1]) for r in ab]
fig, ax = plt.subplots(figsize=(7, 2.8))
bars = ax.barh(names, seconds, color=plt.cm.tab10(range(len(names))))
ax.bar_label(bars, [f"{float(r[2]):.0f} GFLOP/s" for r in ab], padding=3, fontsize=8)
ax.set_xlim(0, max(seconds) * 1.35)
ax.invert_yaxis()
ax.set_title("SD v1 UNet work of one guided step at 256 px (2 x 0.180 TFLOP)\n"
             "2-core Zen 3 CPU, float32, XLA, random weights; best of 3 interleaved rounds")
ax.set_xlabel("seconds (shared machine)")
ax.set_ylabel("implementation")
plt.show()

# %% [markdown]
# What the table says: at full size sdlearn's UNet is as fast as KerasCV's (within 1%, inside
# the noise), one call of batch 2 beats two calls of batch 1 by a few percent (the $t_0$ of
# section 4 is small next to seconds of arithmetic), and both run at or above the rate that a
# large eager matrix multiply reached in the same minutes, the CPU's practical ceiling. On an
# idle Zen 3 (the project's design measurements) the matmul reaches 129 to 141 GFLOP/s and
# KerasCV's guided step 105 to 120, i.e. 80 to 88% of it. Put differently: on a CPU a 512 px
# image with 50 steps cannot take much less than the floor section 1 computed (ten minutes on
# the Zen 3, three on the Zen 5), in sdlearn or anywhere else. The fast paths of sections 5
# and 6 have little left to win here; section 7's blocked attention wins at 512 px because
# the einsum attention there was not arithmetic but memory traffic.
#
# ### The GPU row is still open
#
# The fast paths that matter on a GPU (the compiled loop, bfloat16, fused attention: together
# the `sdlearn-fast` configuration of `benchmarks/benchmark.py`) have not been measured yet:
# no GPU machine was lent to the work that wrote the benchmarks. For comparison, the project's
# design notes measured others on one H100 (512 px, batch 3, 50 steps, random weights, one
# run): KerasCV on Keras 3 + JAX with XLA and mixed float16 took 3.26 s per batch, diffusers
# in float16 with SDPA attention 1.43 s, and with `torch.compile` 0.88 s; the compute floor at
# 989 TFLOP/s is 0.25 s. The recipe for the missing row, from `benchmarks/README.md`:

# %%
readme = (ROOT / "benchmarks" / "README.md").read_text()
recipe = readme.split("## On the GPU machine")[1]
fetch, device_call = (textwrap.dedent(block) for block in
                      re.findall(r"```bash\n(.*?)```", recipe, flags=re.S)[:2])
print("1. here, once: fetch the wheels (Keras etc. for Python 3.12, ~10 MB)\n" + fetch)
print("2. on the GPU machine, with .whl carried along:\n" + device_call)

# %% [markdown]
# ## Summary
#
# | fast path | agrees with float32 | on this 2-core CPU | where it pays |
# |---|---|---|---|
# | XLA | to ~1e-6 | tiny model: many times faster than eager; full size: 72-87% of the matmul rate | always, once compiled |
# | one call of $2B$ | to float32 rounding | saves the per-call overhead $t_0$: large for tiny, a few % at full size | GPUs, small batches |
# | compiled loop | to float32 rounding | saves the Python between steps | GPUs (steps of milliseconds) |
# | bfloat16 / float16 | to ~1e-1 / 1e-2 of the scale | no faster: Zen 3 has no half arithmetic; Zen 5's bfloat16 matmuls run 1.8-1.9x, its whole UNet 0.8x | GPUs with tensor cores |
# | blocked attention (the default) | the same numbers (0 difference measured) | SD's 64x64 attention 2.4x faster on the Zen 3 (`benchmarks/attention.py`) | CPUs, large images |
# | fused attention | to ~1e-6 | no change (TensorFlow has no fused kernel) | GPUs, large images |
# | Winograd convolutions | to ~1e-6 | SD v1 on the Zen 4: a 512 px image 10% faster, its decode 39%, for 2.3 GB more memory; within `WINOGRAD_MAX_TILES`, compiled to a smaller program, with folded upsampling: all five CPU targets in each of two runs, the step at 89% and 88% of the matmul rate, an image in 7% and 19% less time than KerasCV's, 0.13 and 0.20 GB less memory (7.40, 7.38 GB) | CPUs with memory to spare |
# | folded upsampling | to ~1e-6 | SD v1 on the Zen 4: its decode 15% faster, a 512 px image 3%, the same memory; with Winograd's convolutions, an image 15% faster (177.6 s), for 2.1 GB more | everywhere: less arithmetic, no copy |
#
# Turning everything on for a GPU is one constructor and one setting:
#
# ```python
# import sdlearn.layers
# sdlearn.layers.ATTENTION = "fused"  # on a GPU; before building: compiled models keep what they traced
# sd = StableDiffusion("sd-v1", compiled_loop=True, dtype_policy="mixed_bfloat16")
# ```
#
# `tests/test_fast.py` checks each switch, the whole pipeline included, against the plain
# float32 path on every test run.
#
# ## Exercises
#
# Each exercise has a `check_*` function that says what is wrong and gives a hint. Replace
# the `None` with your answer and run the cell. The solutions are in the hidden cells.
#
# **Exercise 1.** Write `conv_flops(height, width, kernel_size, c_in, c_out)`: the FLOPs of
# one image through a stride-1, "same"-padded `Conv2D` without bias (count multiplies and adds).

# %%
from sdlearn.exercises.ch08_performance import (check_bfloat16_gap, check_conv_flops,
                                                check_image_tflop, check_score_memory)


def conv_flops(height, width, kernel_size, c_in, c_out):
    return None  # your code here


check_conv_flops(conv_flops)


# %% tags=["hide-cell"]
def conv_flops(height, width, kernel_size, c_in, c_out):
    return 2 * height * width * kernel_size**2 * c_in * c_out


check_conv_flops(conv_flops)

# %% [markdown]
# **Exercise 2.** How many TFLOP does one 512 px image cost with **30** DDIM steps and
# guidance scale 7.5? (UNet 0.803 TFLOP per image and call, decoder 2.51, text encoder 0.013.)

# %%
check_image_tflop(None)  # your answer, in TFLOP

# %% tags=["hide-cell"]
check_image_tflop(2 * 30 * 0.803 + 2.51 + 2 * 0.013)

# %% [markdown]
# **Exercise 3.** How many bytes does the score tensor of the UNet's first self-attention
# take for one **768 px** image with guidance (batch 2), 8 heads, in float16?

# %%
check_score_memory(None)  # your answer, in bytes

# %% tags=["hide-cell"]
tokens = (768 // 8) ** 2  # every latent pixel is a token: 96 x 96
check_score_memory(2 * 8 * tokens**2 * 2)

# %% [markdown]
# **Exercise 4.** The format table gives the gap above 1.0. What is the distance from **256**
# to the next larger bfloat16 number? Reason it out, then check your answer with `ops.cast`.

# %%
check_bfloat16_gap(None)  # your answer, a number

# %% tags=["hide-cell"]
# 256 = 2^8 and bfloat16 stores 7 mantissa bits: 2^7 numbers from 256 to 512, 2^(8-7) apart
for x in (256.9, 257.1, 258.0):
    rounded = ops.convert_to_numpy(ops.cast(ops.cast(x, "bfloat16"), "float32"))
    print(f"{x} in bfloat16 -> {rounded}")
check_bfloat16_gap(2.0)

# %% [markdown]
# **Exercise 5 (open, no check).** Measure $t_0$ and $F/R$ of section 4 for the tiny UNet: time
# `unet.predict_on_batch` at batch 1, 2, 4 and 8 (each batch size compiles once) and fit a
# line to time against batch. How many images per call would it take before the arithmetic
# costs as much as the overhead? Repeat with `jit_compile=False`.
#
# **Next:** that is the course. `benchmarks/README.md` shows how to measure the full-size
# model yourself, on a CPU or on a GPU.
