"""Chapter 8 exercises: counting FLOPs and bytes, and what half precision can represent.

Each ``check_*`` prints "Correct!" or says what is wrong with a hint, and returns True/False.
The numbers come from the chapter: a UNet call of SD v1 costs 0.803 TFLOP at 512 px, the
VAE decoder 2.51 TFLOP, the text encoder 13 GFLOP (counted with PyTorch's FLOP counter, as
benchmarks/benchmark.py records; the chapter's own count of the UNet agrees).
"""

import numbers

import numpy as np

from sdlearn.exercises import verdict

UNET_TFLOP_512 = 0.803  # one UNet call, one image, 64x64 latent
DECODER_TFLOP_512 = 2.51
TEXT_ENCODER_TFLOP = 0.013


def _number(value, what):
    """A problem message when ``value`` is not a plain real number, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        return f"give {what} as a number, got {value!r}"
    return None


def _near(value, target, rtol=0.01):
    return abs(value - target) <= rtol * abs(target)


# --- Exercise 1: the FLOPs of a convolution -----------------------------------------------------

CONV_CASES = [(64, 64, 3, 320, 320), (32, 32, 1, 640, 1280), (8, 16, 3, 4, 32), (5, 7, 5, 3, 2)]


def conv_flops(height, width, kernel_size, c_in, c_out):
    """FLOPs of a 'same' convolution: every output value is a sum of k*k*C_in products, one
    multiply and one add each: 2 H W k^2 C_in C_out."""
    return 2 * height * width * kernel_size**2 * c_in * c_out


def check_conv_flops(my_conv_flops):
    """Exercise: ``my_conv_flops(height, width, kernel_size, c_in, c_out)`` -> the FLOPs of one
    image through a stride-1 'same' Conv2D (multiplies and adds both count; no bias)."""
    hint = ("Each of the H x W x C_out outputs is a dot product of length k x k x C_in, and a "
            "dot product of length n costs n multiplies and n adds.")
    if my_conv_flops is None or not callable(my_conv_flops):
        return verdict([f"pass a function, got {my_conv_flops!r}"], hint)
    for case in CONV_CASES:
        try:
            got = my_conv_flops(*case)
        except Exception as error:  # a learner's bug: report it instead of a traceback
            return verdict([f"calling your function with {case} raised "
                            f"{type(error).__name__}: {error}"], hint)
        if got is None:
            return verdict(["your function returned None: did you forget `return`?"], hint)
        problem = _number(got, "the FLOPs")
        if problem:
            return verdict([problem], hint)
        right = conv_flops(*case)
        if _near(got, right, 1e-9):
            continue
        h, w, k, c_in, c_out = case
        ratio = got / right
        if _near(ratio, 0.5, 1e-9):
            problem = ("that is the number of multiply-adds (MACs); FLOPs count the multiply "
                       "and the add separately, twice as many")
        elif _near(ratio, 1 / k**2, 1e-9) or _near(ratio, 1 / (2 * k**2), 1e-9):
            problem = "each output reads a k x k window: the kernel size counts squared"
        elif _near(ratio, 1 / k, 1e-9) or _near(ratio, 1 / (2 * k), 1e-9):
            problem = "the window is k x k, not k: the kernel size counts squared"
        else:
            problem = f"for (H, W, k, C_in, C_out) = {case} you gave {got:.6g}, not {right}"
        return verdict([problem], hint)
    return verdict([], success="Correct! A 3x3 conv at 64x64 from 320 to 320 channels: "
                               f"{conv_flops(*CONV_CASES[0]) / 1e9:.1f} GFLOP.")


# --- Exercise 2: the FLOPs of one image ---------------------------------------------------------

IMAGE_STEPS = 30


def image_tflop(num_steps=IMAGE_STEPS):
    """One 512 px image with guidance: two UNet passes per step, the decoder once, and the
    text encoder twice (the prompt and the empty prompt)."""
    return 2 * num_steps * UNET_TFLOP_512 + DECODER_TFLOP_512 + 2 * TEXT_ENCODER_TFLOP


def check_image_tflop(tflop):
    """Exercise: TFLOP of one 512 px image, 30 DDIM steps, guidance scale 7.5 (within 1%)."""
    n = IMAGE_STEPS
    right = image_tflop()
    hint = ("Guidance needs the UNet's noise with the prompt and without it at every step (one "
            "call of batch 2 or two of batch 1: the same work); then decode once. The text "
            "encoder is almost free.")
    problem = _number(tflop, "the TFLOP")
    if problem:
        return verdict([problem], hint)
    if _near(tflop, right):
        share = 2 * n * UNET_TFLOP_512 / right
        return verdict([], success=f"Correct! {right:.1f} TFLOP, {share:.0%} of it in the UNet.")
    unet_once = n * UNET_TFLOP_512
    if _near(tflop, right * 1e12) or _near(tflop, right * 1e3):
        problem = "give the answer in TFLOP (10^12 FLOP), not in FLOP or GFLOP"
    elif any(_near(tflop, unet_once + extra) for extra in
             (0, DECODER_TFLOP_512, DECODER_TFLOP_512 + TEXT_ENCODER_TFLOP,
              DECODER_TFLOP_512 + 2 * TEXT_ENCODER_TFLOP)):
        problem = ("that counts one UNet pass per step; classifier-free guidance needs two "
                   "(conditional and unconditional), whether batched or not")
    elif _near(tflop, 2 * unet_once):
        problem = "that is the UNet alone: the image still has to be decoded once"
    elif _near(tflop, image_tflop(50)):
        problem = f"that is 50 steps; this exercise has {n}"
    elif _near(tflop, right + n * DECODER_TFLOP_512) or _near(tflop, right + 2 * DECODER_TFLOP_512):
        problem = "the decoder runs once, on the final latent, not at every step"
    else:
        problem = f"{tflop} TFLOP is not it"
    return verdict([problem], hint)


# --- Exercise 3: the memory of attention scores -------------------------------------------------

SCORE_IMAGE_SIZE, SCORE_HEADS = 768, 8


def score_bytes(image_size=SCORE_IMAGE_SIZE, batch=2, heads=SCORE_HEADS, bytes_per_value=2):
    """Bytes of the (batch, heads, T, T) score tensor of the UNet's first self-attention, with
    T = (image_size / 8)^2 latent pixels as tokens."""
    tokens = (image_size // 8) ** 2
    return batch * heads * tokens**2 * bytes_per_value


def check_score_memory(num_bytes):
    """Exercise: bytes of softmax(q k^T / sqrt(d)) in the UNet's first self-attention for one
    768 px image with guidance (so batch 2), 8 heads, in float16 (within 1%)."""
    right = score_bytes()
    hint = ("The latent is 768 / 8 = 96 pixels a side and every latent pixel is a token; "
            "the scores are (batch, heads, T, T), float16 takes 2 bytes.")
    problem = _number(num_bytes, "the number of bytes")
    if problem:
        return verdict([problem], hint)
    if _near(num_bytes, right):
        return verdict([], success=f"Correct! {right / 2**30:.2f} GiB for one tensor that a "
                                   "fused kernel never writes to memory.")
    if _near(num_bytes * 2**30, right) or _near(num_bytes * 1e9, right) \
            or _near(num_bytes * 2**20, right) or _near(num_bytes * 1e6, right):
        problem = "give the answer in bytes, not in GB, GiB or MB"
    elif _near(num_bytes, score_bytes(bytes_per_value=4)):
        problem = "that is float32 (4 bytes a value); the exercise asks for float16"
    elif _near(num_bytes, score_bytes(batch=1)):
        problem = ("that is half of it: guidance doubles the batch (the conditional and "
                   "unconditional rows), and float16 takes 2 bytes a value")
    elif _near(num_bytes, score_bytes(heads=1)):
        problem = "each of the 8 heads has its own score matrix"
    elif _near(num_bytes, 2 * SCORE_HEADS * (SCORE_IMAGE_SIZE // 8) ** 2 * 2):
        problem = "the scores are T x T (every token against every token), not T"
    elif _near(num_bytes, score_bytes(image_size=SCORE_IMAGE_SIZE * 8)):
        problem = "the tokens are latent pixels (the image divided by 8 a side), not image pixels"
    else:
        problem = f"{num_bytes} bytes is not it"
    return verdict([problem], hint)


# --- Exercise 4: how coarse bfloat16 is ---------------------------------------------------------

def check_bfloat16_gap(gap):
    """Exercise: the distance from 256 to the next larger bfloat16 number."""
    right = 2.0 ** (8 - 7)  # 256 = 2^8, and 7 stored mantissa bits
    hint = ("Between 2^e and 2^(e+1) a format with m stored mantissa bits has 2^m evenly "
            "spaced numbers, so their gap is 2^(e - m). Check: keras.ops.cast(256 + x, "
            "'bfloat16') for a few x.")
    problem = _number(gap, "the gap")
    if problem:
        return verdict([problem], hint)
    if _near(gap, right, 1e-6):
        return verdict([], success="Correct! 256, 258, 260, ...: bfloat16 cannot tell 256 "
                                   "from 257.")
    for value, why in ((2.0**-7, "2^-7 is the gap above 1.0; above 256 = 2^8 the numbers are "
                                 "spaced 2^8 times wider"),
                       (2.0**-10, "2^-10 is float16's gap above 1.0, and 256 is not 1"),
                       (2.0 ** (8 - 10), "0.25 is float16's gap above 256 (10 stored mantissa "
                                         "bits); bfloat16 stores 7"),
                       (2.0 ** (8 - 23), "that is float32's gap above 256 (23 stored mantissa "
                                         "bits); bfloat16 stores 7"),
                       (1.0, "bfloat16 has 8 significant bits, but the leading 1 is implicit: "
                             "7 are stored, so the gap above 2^8 is 2^(8-7)"),
                       (4.0, "4 is the gap above 512 = 2^9; 256 is 2^8")):
        if _near(gap, value, 1e-6):
            return verdict([why], hint)
    return verdict([f"{gap} is not it"], hint)
