"""Fast paths: the same Stable Diffusion, computed faster. Each one is a switch.

The readable path (``StableDiffusion(model)`` with its defaults) runs every model through XLA
and the DDIM loop in Python, one batched UNet call per step. The performance chapter measures
what each switch below adds or removes, and the tests (``tests/test_fast.py``) check that each
one computes the same numbers as the plain float32 path:

    fast path                         switch                                       agrees with float32
    XLA, one program per model        StableDiffusion(jit_compile=True) (default)  to ~1e-6 (XLA
                                                                                   fuses and reorders)
    guidance as ONE UNet call of 2B   StableDiffusion(batched_guidance=True)       same math; the
                                      (default); False: KerasCV's two calls of B   GEMMs block the
                                                                                   batch differently
    the whole loop as one program     StableDiffusion(compiled_loop=True)          same math, ~1e-6
    half precision                    StableDiffusion(dtype_policy=                ~1e-2 of the
                                      "mixed_bfloat16" or "mixed_float16")         output's scale
    attention in cache-sized blocks   sdlearn.layers.ATTENTION = "blocked"         same math, ~1e-7
                                      (default); "einsum": all heads at once
    fused attention kernel            sdlearn.layers.ATTENTION = "fused"           same math, ~1e-6
    3x3 convolutions by Winograd's    sdlearn.layers.CONVOLUTION = "winograd"      4/9 of the
    F(2x2, 3x3)                       ("direct", the default: Keras's Conv2D)      multiplies, ~1e-6
    the 2x upsampling's copy folded   sdlearn.layers.UPSAMPLING = "folded"         4/9 of the
    into its 3x3 convolution          ("copy", the default: copy, then convolve)   multiplies, ~1e-6

Where the time goes. One guided step at 512 px is two UNet passes of 0.803 TFLOP; almost all of
it is convolutions and matrix multiplies. A CPU's float32 matrix multiply is the ceiling: a
program that keeps the multiply units busy is as fast as the hardware allows, and what is left
to win is the time *between* the multiplies (Python, launching ops, reading and writing
activations that fused code would keep in cache). XLA compilation removes most of that.
On a GPU the ceiling is much higher in half precision (tensor cores), the attention's score
matrices cost memory traffic that a fused kernel avoids, and the gaps between steps (the Python
loop hands each step's result back to the host) are worth removing too: that is what the
compiled loop and mixed precision are for. Two switches lower the floor itself: Winograd's
F(2x2, 3x3) computes a 3x3 convolution, most of the UNet's arithmetic and nearly all of the
decoder's, with 4/9 of the multiplies (``sdlearn.layers.winograd_conv``), and an upsampling
(copy each pixel 2x2, then a 3x3 convolution) folds the copy into its kernel, also 4/9
(``sdlearn.layers.folded_upsample_conv``). Neither is the default: both agree with SD's
definition only to float32 rounding, and Winograd's transformed copies of tiles and kernels
cost memory (folding saves some: the copy is never made).

Measured on the course's CPU (2 cores, AMD EPYC Zen 3, float32; benchmarks/RESULTS.md): with
XLA, sdlearn's UNet runs as fast as KerasCV's at 256 px (one call of 2B or two of B: within a
few percent), near the rate of a plain float32 matmul; at 512 px blocked attention makes a
whole image 20% faster than KerasCV's (attention at 64x64 is memory-bound, not arithmetic);
the compiled loop saves only the milliseconds of Python between 3-second steps, and half
precision gains nothing: the CPU has AVX2 and F16C but no bf16 or fp16 arithmetic, so half
values are widened to float32 for every product (measured: half matmuls no faster).
On an AMD Zen 4 (2 cores, AVX-512, 2026-12-07), Winograd's convolutions made a 512 px image of
20 steps 10% faster (196.9 s against 218.8; KerasCV 225.0, diffusers 215.3) and its decode 39%
faster (8.4 s against 13.8), for 2.3 GB more peak memory (9.28 GB against 6.96). Since then they
stay out of the decoder's large levels (``layers.WINOGRAD_MAX_TILES``), hold less at once and
compile to a smaller program: with folded upsampling, 195.0 s per image (KerasCV 209.9,
diffusers 210.3) at 7.40 GB (KerasCV 7.53), the guided step at 89% of the matmul rate: the
first run to meet all five of the project's CPU targets.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from sdlearn import sampler
from sdlearn.checks import check_choice, check_int

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def dtype_policy(name):
    """Build models under a Keras dtype policy: ``with dtype_policy("mixed_bfloat16"): UNet()``.

    "float32": everything in float32 (the default, the reference). "mixed_float16" and
    "mixed_bfloat16": weights stay float32 (so the same .h5 files load), each layer computes
    in half precision, and the normalisations and the attention softmax upcast to float32
    (GroupNorm's mean of 4096 pixels, or a sum over 4096 keys, loses too many digits in 16
    bits). Half precision halves memory traffic and, on GPUs with tensor cores, runs matrix
    multiplies 10x faster or more; a CPU without bf16 instructions (like the course's) gains
    nothing and usually loses. bfloat16 has float32's range (no overflow) and 8 bits of
    mantissa; float16 has 11 bits and overflows above 65504.
    """
    check_choice("dtype_policy", name, DTYPE_POLICIES)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def guidance_in_two_calls(unet_call):
    """KerasCV's way of guiding, kept to measure against: two UNet calls of batch B per step.

    ``sampler.guided_noise`` stacks [unconditional; conditional] into ONE call of batch 2B.
    This wraps a UNet so that the same stacked inputs are split into their two halves, each
    run on its own, and the outputs stacked again: the same numbers, twice the calls. On a
    GPU one big batch keeps the chip busier; on a CPU the difference is small (the work is
    the same, and a 2-core CPU is already busy at batch B).
    """

    def call(inputs):
        halves = [ops.split(x, 2) for x in inputs]  # [[x_uncond, x_cond], [t, t], [c_u, c]]
        return ops.concatenate([unet_call([h[0] for h in halves]),
                                unet_call([h[1] for h in halves])])

    return call


class CompiledDDIM(keras.Model):
    """The whole DDIM loop as ONE compiled program: noise (B, h, w, 4) -> latent x_0.

    ``sampler.sample`` runs the loop in Python: each step calls the compiled UNet, gets its
    result back as a numpy array, and runs the DDIM update op by op. Here the loop itself is
    a Keras op, ``keras.ops.fori_loop`` (TensorFlow's while_loop, JAX's lax.fori_loop), over
    tables of the timesteps and noise levels fixed when the model is built, so XLA compiles
    all ``num_steps`` steps, guidance and DDIM updates included, into one program that never
    returns to Python until the end. The body is the readable path's own functions
    (``sampler.guided_noise``, ``sampler.ddim_step``): the same math, in one program.
    It cannot call back after every step (there is no Python between steps), and a new
    ``num_steps``, ``guidance_scale`` or ``start_step`` is a new program to compile.

        loop = CompiledDDIM(unet, num_steps=50, guidance_scale=7.5)
        latent = loop.predict_on_batch([noise, context, unconditional_context])
    """

    def __init__(self, unet, num_steps=50, guidance_scale=7.5, start_step=0, **kwargs):
        super().__init__(**kwargs)
        self.unet, self.guidance_scale, self.start_step = unet, guidance_scale, start_step
        timesteps = sampler.ddim_timesteps(num_steps)
        alphas = sampler.ALPHAS_CUMPROD[timesteps]
        # Tables the loop indexes with its counter i: t_i, alpha_{t_i} and the next level.
        # float32 here is the same rounding the Python loop's casts do.
        self.timesteps = timesteps.astype("float32")
        self.alphas = alphas.astype("float32")
        self.alphas_prev = np.append(alphas[1:], 1.0).astype("float32")
        self.compile(jit_compile=True)

    def build(self, input_shape):
        pass  # the UNet is built already; there are no weights of our own

    def call(self, inputs):
        noise, context, unconditional_context = inputs

        def step(i, x_t):  # one DDIM step, exactly as sampler._denoise does it
            eps = sampler.guided_noise(self.unet, x_t, ops.take(self.timesteps, i), context,
                                       unconditional_context, self.guidance_scale)
            x_prev, _ = sampler.ddim_step(x_t, eps, ops.take(self.alphas, i),
                                          ops.take(self.alphas_prev, i))
            return x_prev

        return ops.fori_loop(self.start_step, len(self.timesteps), step,
                             ops.cast(noise, "float32"))


def sample(unet, noise, context, unconditional_context, num_steps=50, guidance_scale=7.5,
           start_step=0, loops=None):
    """``sampler.sample`` (DDIM) with the whole loop compiled; same arguments, no callback.

    ``loops``: a dict that keeps the compiled loops for reuse, one per (num_steps,
    guidance_scale, start_step); compiling one costs about as much as compiling the UNet.
    """
    check_int("start_step", start_step, 0, num_steps)
    x_t, context, unconditional_context = sampler._check_inputs(
        noise, context, unconditional_context, guidance_scale)
    if unconditional_context is None:  # guidance 1 never reads it, but the program takes it
        unconditional_context = context
    loops = {} if loops is None else loops
    key = (num_steps, float(guidance_scale), start_step)
    if key not in loops:
        loops[key] = CompiledDDIM(unet, num_steps, guidance_scale, start_step)
    return loops[key].predict_on_batch([x_t, context, unconditional_context])
