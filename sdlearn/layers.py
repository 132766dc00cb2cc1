"""Building blocks shared by the text encoder, the UNet and the VAE.

Shapes use B = batch, T = tokens (or pixels, H*W, once an image is flattened), heads = attention
heads, d = head size, C = channels. Images are channels-last: (B, H, W, C).
"""

import functools
import math
import operator

import keras
from keras import ops

from sdlearn.checks import check_choice


# The attention switch (a fast path, see sdlearn/fast.py), read when a model is called or traced
# (a compiled model keeps the attention it was traced with, so set it before the first call):
#   "einsum"   the formula as written, all heads at once: what the course reads and plots.
#   "blocked"  the same formula one head and one block of queries at a time, so each block of
#              scores stays in the CPU's cache (the default; benchmarks/attention.py on the
#              course's CPU, XLA: SD's 64x64 self-attention in 0.93 s instead of 2.2 s).
#   "fused"    the backend's kernel, ``keras.ops.dot_product_attention``: on a GPU (JAX: cuDNN
#              flash attention; PyTorch: SDPA) it never writes the score matrix to memory. The
#              TensorFlow backend has no fused kernel and runs the einsums.
ATTENTION = "blocked"
ATTENTION_KERNELS = ("einsum", "blocked", "fused")

# "blocked" leaves a head's (Tq, Tk) scores whole up to this size: splitting them saves nothing
# there (measured on the course's CPU: 256 x 256 no faster split, 512 x 512 twice as fast).
BLOCKED_ABOVE = 2 ** 17
# Scores per block: 2**20 float32 values, 4 MB, about one core's share of this CPU's caches
# (512 KB L2 + half of a 32 MB L3). At 4096 keys that is 256 queries per block.
BLOCK_SCORES = 2 ** 20

# The convolution switch (a fast path, see sdlearn/fast.py), read when a model is traced, like
# ATTENTION:
#   "direct"    every convolution as Keras computes it (the default: what the reference does).
#   "winograd"  3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
#               2016): 16 multiplies per 2x2 block of outputs and pair of channels instead of
#               36. The same numbers to float32 rounding (~1e-6), in less time on a CPU, for
#               more memory (see ``winograd_conv`` and benchmarks/RESULTS.md).
CONVOLUTION = "direct"
CONVOLUTIONS = ("direct", "winograd")
# Winograd only for kernels of at most this many output channels: SD's 1280-wide kernels are most
# of the UNet's weights, so their transformed copies (16/9 of each kernel's size) are the largest
# of Winograd's extra memory (benchmarks/RESULTS.md, on a Zen 4, before WINOGRAD_MAX_TILES and
# before each transform waited for its input: a 512 px image peaked at 10.2 GB with them, 9.3 GB
# without, 7.0 GB with direct convolutions).
WINOGRAD_MAX_WIDTH = 640
# ... and only where one image's transformed tiles, 4 x H x W x C_in values, are at most this
# many (64 MB in float32): the tiles and the 16 products are made whole, so one convolution at
# the decoder's 256 and 512 px levels would hold 0.5 to 1.6 GB more than the direct one does. At
# 512 px this keeps every UNet convolution and the decoder's 64x64 level.
WINOGRAD_MAX_TILES = 2 ** 24

# The upsampling switch (a fast path, read when a model is traced):
#   "copy"      copy each pixel into a 2x2 block, then a 3x3 convolution (the default: SD's
#               definition, and what the reference does).
#   "folded"    the same outputs from the small image by four 2x2 convolutions, one per output
#               pixel's position in its block (``folded_upsample_conv``): 4/9 of the multiplies,
#               and the 4x larger copy is never made.
UPSAMPLING = "copy"
UPSAMPLINGS = ("copy", "folded")


def attention_weights(q, k, causal=False):
    """How much each query attends to each key: softmax(q k^T / sqrt(d)).

    q: (B, Tq, heads, d), k: (B, Tk, heads, d) -> (B, heads, Tq, Tk), each row sums to 1.
    Dividing by sqrt(d) keeps the scores' variance near 1 whatever the head size, so the
    softmax does not saturate (Vaswani et al., 2017). With ``causal``, query i may only see
    keys 0..i: CLIP's text encoder reads the prompt left to right, like a language model.
    In half precision the softmax runs in float32 (a sum over 4096 keys loses digits in
    float16); in float32 the casts do nothing.
    """
    scores = ops.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        num_queries, num_keys = ops.shape(scores)[-2], ops.shape(scores)[-1]
        future = ops.triu(ops.ones((num_queries, num_keys)), k=1)  # 1 above the diagonal
        scores = ops.where(future > 0, ops.cast(float("-inf"), scores.dtype), scores)
    return ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), q.dtype)


def einsum_attention(q, k, v, causal=False):
    """softmax(q k^T / sqrt(d)) v, all heads at once: (B, Tq, heads, d) -> (B, Tq, heads, d)."""
    return ops.einsum("bhqk,bkhd->bqhd", attention_weights(q, k, causal), v)


def blocked_attention(q, k, v, rows):
    """``einsum_attention``, one head and ``rows`` queries at a time (``rows`` divides Tq).

    q: (B, Tq, heads, d), k and v: (B, Tk, heads, d) -> (B, Tq, heads, d), the same numbers.
    All heads at once, SD's 64x64 level writes 2 x 8 score matrices of 4096 x 4096 (1.07 GB
    in float32) and the softmax reads and writes them several times (max, exp, sum, divide),
    each time through main memory; a (rows, Tk) block stays in the cache for all of those.
    Each query's row of scores only involves that query, so the blocks are independent.
    """
    _, tq, heads, d = q.shape
    def by_head(x):  # (B, T, heads, d) -> (B * heads, T, 1, d): one head per batch entry
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, x.shape[1], 1, d))
    keys, values = by_head(k), by_head(v)
    blocks = ops.reshape(by_head(q), (-1, rows, 1, d))  # (B * heads * Tq/rows, rows, 1, d)
    head = ops.arange(ops.shape(blocks)[0]) // (tq // rows)  # the head of each block

    def one_block(block):
        queries, h = block  # (rows, 1, d), which head
        return einsum_attention(queries[None], keys[h][None], values[h][None])[0]

    out = ops.map(one_block, (blocks, head))  # (B * heads * Tq/rows, rows, 1, d)
    out = ops.reshape(out, (-1, heads, tq, d))  # (B, heads, Tq, d)
    return ops.transpose(out, (0, 2, 1, 3))


def query_block(tq, tk):
    """Queries per block of "blocked" attention, or None where a head's scores stay whole.

    The largest divisor of Tq that keeps a block at BLOCK_SCORES scores: 256 for SD's 4096 x
    4096 self-attention, all 4096 queries (one head at a time) against the prompt's 77 keys.
    None below BLOCKED_ABOVE, and when a length is unknown when the model is traced (None on
    TensorFlow, a symbolic dimension on JAX: any length the model will be called with).
    """
    if not (isinstance(tq, int) and isinstance(tk, int)) or tq * tk <= BLOCKED_ABOVE:
        return None
    return next(n for n in range(min(tq, max(1, BLOCK_SCORES // tk)), 0, -1) if tq % n == 0)


def attention(q, k, v, causal=False, kernel=None):
    """Scaled dot-product attention: each query's output is a weighted mean of the values.

    q: (B, Tq, heads, d), k and v: (B, Tk, heads, d) -> (B, Tq, heads, d).
    ``kernel`` (default: the module's ``ATTENTION``) chooses how it is computed; all three give
    the same numbers. The fused kernel takes the same (B, T, heads, d) layout and the same
    causal mask (``is_causal``: query i sees keys 0..i); the VAE's attention is the one-head
    case. "blocked" keeps causal attention whole: the text encoder's 77 x 77 scores are small.
    """
    kernel = ATTENTION if kernel is None else kernel
    check_choice("attention kernel", kernel, ATTENTION_KERNELS)
    if kernel == "fused":
        return ops.dot_product_attention(q, k, v, is_causal=causal)
    rows = None if kernel == "einsum" or causal else query_block(q.shape[1], k.shape[1])
    return einsum_attention(q, k, v, causal) if rows is None else blocked_attention(q, k, v, rows)


class Composite(keras.layers.Layer):
    """Base for layers made only of other Keras layers.

    The sublayers create their own weights on their first call, so there is nothing to build
    here. Saying so matters for speed: without a ``build``, Keras traces ``call`` once more
    just to discover the weights, and nested layers multiply those traces.
    """

    def build(self, input_shape):
        pass  # each sublayer builds itself when call() first runs it


class MultiHeadAttention(Composite):
    """Queries from ``x``; keys and values from ``context`` (cross-attention) or from ``x``.

    x: (B, Tq, C), context: (B, Tk, C_ctx) -> (B, Tq, num_heads * head_size).
    CLIP's projections have biases; the UNet's q, k and v have none (``qkv_bias=False``).
    """

    def __init__(self, num_heads, head_size, qkv_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_size = num_heads, head_size
        width = num_heads * head_size
        self.to_q = keras.layers.Dense(width, use_bias=qkv_bias)
        self.to_k = keras.layers.Dense(width, use_bias=qkv_bias)
        self.to_v = keras.layers.Dense(width, use_bias=qkv_bias)
        self.to_out = keras.layers.Dense(width)

    def split_heads(self, x):  # (B, T, heads * d) -> (B, T, heads, d)
        return ops.reshape(x, ops.shape(x)[:-1] + (self.num_heads, self.head_size))

    def heads(self, x, context=None):
        """The per-head queries, keys and values, each (B, T, heads, d)."""
        context = x if context is None else context
        return (self.split_heads(self.to_q(x)), self.split_heads(self.to_k(context)),
                self.split_heads(self.to_v(context)))

    def call(self, x, context=None, causal=False):
        out = attention(*self.heads(x, context), causal=causal)  # (B, Tq, heads, d)
        width = self.num_heads * self.head_size  # heads concatenated back: (B, Tq, heads * d)
        return self.to_out(ops.reshape(out, ops.shape(x)[:-1] + (width,)))


# F(2x2, 3x3): from a 4x4 tile d of the input and a 3x3 kernel g, the tile's 2x2 outputs are
#     Y = A^T [(G g G^T) * (B^T d B)] A        (* elementwise: the only 16 multiplies)
# Tiles overlap by 2 (each output needs its 3x3 neighbourhood); G g G^T is computed once per call.
WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # B^T, (4, 4)
WINOGRAD_G = ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1))  # G, (4, 3)
WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))  # A^T, (2, 4)


def combine(matrix, parts):
    """A small constant matrix times a list of tensors: [sum_i matrix[a][i] * parts[i] for a].

    Written as sums, XLA fuses each into one pass over memory; as an einsum it would become a
    matrix multiply with rows of 4, several times slower. The nonzero entries of a row of
    Winograd's matrices are +-s (s = 1 or 1/2), so a row is s * (the parts at +s minus the parts
    at -s): nothing for a zero, at most one multiply. Each operation is one more node in the
    program XLA compiles, and a whole UNet of them costs memory (benchmarks/RESULTS.md).
    """
    sums = []
    for row in matrix:
        s = max(row)
        if any(c not in (0, s, -s) for c in row):
            raise ValueError(f"combine takes rows whose nonzero entries are +-s, got {row}")
        plus = [part for c, part in zip(row, parts) if c == s]
        minus = [part for c, part in zip(row, parts) if c == -s]
        total = functools.reduce(operator.sub, minus, functools.reduce(operator.add, plus))
        sums.append(total if s == 1 else s * total)
    return sums


def winograd_kernel(kernel):
    """G g G^T for every pair of channels: (3, 3, C_in, C_out) -> (16, C_in, C_out)."""
    rows = ops.stack(combine(WINOGRAD_G, ops.unstack(kernel)))  # (4, 3, C_in, C_out)
    u = ops.stack(combine(WINOGRAD_G, ops.unstack(rows, axis=1)), axis=1)  # (4, 4, C_in, C_out)
    return ops.reshape(u, (16,) + tuple(kernel.shape[2:]))


def winograd_conv(x, kernel):
    """The 3x3 "same" convolution of x (H and W even) by F(2x2, 3x3), in float32 rounding.

    x: (B, H, W, C_in), kernel: (3, 3, C_in, C_out) -> (B, H, W, C_out). Output block (r, s),
    pixels 2r..2r+1 by 2s..2s+1, reads rows 2r..2r+3 and columns 2s..2s+3 of the zero-padded
    x: row i of every tile at once is the strided slice p[:, i::2]. Each of the 16 products
    sums over C_in: a batch of 16 matrix products of (B*H*W/4, C_in) by (C_in, C_out), 4/9 of
    the direct convolution's arithmetic; the transforms are additions. The transformed tiles and the
    products are each 4x the size of the image (memory that the direct convolution never uses).
    """
    h, w, c_out = x.shape[1], x.shape[2], kernel.shape[3]
    n, m = h // 2, w // 2  # blocks down and across
    p = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # (B, H+2, W+2, C_in)
    rows = combine(WINOGRAD_BT, [p[:, i:i + 2 * n:2] for i in range(4)])  # 4 x (B, n, W+2, C_in)
    v = [t for r in rows for t in combine(WINOGRAD_BT, [r[:, :, j:j + 2 * m:2] for j in range(4)])]
    # G g G^T needs only the weights, so XLA would compute every layer's at the start of the
    # program and hold them all at once (0.46 GB in SD's UNet); adding 0 * one value of x makes
    # each wait for its layer's input. The same numbers; only the schedule changes.
    u = winograd_kernel(kernel + 0 * x[0, 0, 0, 0])  # (16, C_in, C_out)
    # The 16 products as one batched product, like the kernel's transform on stacked tensors:
    # fewer, larger operations for XLA to compile (the two together: 0.2 GB less at the UNet's
    # compilation, benchmarks/RESULTS.md, "Fewer operations").
    products = ops.unstack(ops.einsum("xbnmi,xio->xbnmo", ops.stack(v), u))  # 16 x (B, n, m, C_out)
    cols = [combine(WINOGRAD_AT, products[b::4]) for b in range(4)]  # A^T M: [b][dy]
    y = [ops.stack(combine(WINOGRAD_AT, [c[dy] for c in cols]), axis=3) for dy in range(2)]
    return ops.reshape(ops.stack(y, axis=2), (-1, h, w, c_out))  # (B, n, dy, m, dx, C_out)


class Conv2D(keras.layers.Conv2D):
    """Keras's Conv2D, computing by ``winograd_conv`` where ``CONVOLUTION`` says so and it can:
    a 3x3 kernel, at most WINOGRAD_MAX_WIDTH wide, on an image of known, even height and width
    whose tiles fit WINOGRAD_MAX_TILES.
    (The class keeps Keras's name, so that model summaries read the same either way.)"""

    def convolution_op(self, inputs, kernel):  # (B, H, W, C_in) -> (B, H, W, C_out)
        check_choice("convolution", CONVOLUTION, CONVOLUTIONS)
        sides = inputs.shape[1:3]
        if (CONVOLUTION == "winograd" and self.kernel_size == (3, 3)
                and self.filters <= WINOGRAD_MAX_WIDTH
                and all(isinstance(side, int) and side % 2 == 0 for side in sides)
                and 4 * sides[0] * sides[1] * inputs.shape[-1] <= WINOGRAD_MAX_TILES):
            return winograd_conv(inputs, kernel)
        return super().convolution_op(inputs, kernel)


def conv(channels, kernel_size=3):
    """A convolution that keeps height and width (zero padding (k-1)/2 on each side)."""
    return Conv2D(channels, kernel_size, padding="same")


def group_norm(groups):
    """GroupNorm: normalise each group of channels over H, W and the group (Wu & He, 2018).

    Unlike BatchNorm it does not depend on the batch, so one image behaves the same in any batch.
    """
    return keras.layers.GroupNormalization(groups, epsilon=1e-5)


def downsample(channels, padding):
    """Halve H and W with a 3x3 stride-2 convolution (no pooling in SD)."""
    return keras.Sequential([keras.layers.ZeroPadding2D(padding),
                             keras.layers.Conv2D(channels, 3, strides=2)])


def fold(taps):
    """3 taps of a 3x3 kernel along one axis, seen from the image before the 2x copy: output 2i
    reads copied pixels 2i-1, 2i, 2i+1 = pixels i-1, i, i (taps k0, k1 + k2); output 2i+1 reads
    2i, 2i+1, 2i+2 = pixels i, i, i+1 (taps k0 + k1, k2). -> [even outputs', odd outputs']."""
    return [[taps[0], taps[1] + taps[2]], [taps[0] + taps[1], taps[2]]]


def folded_upsample_conv(x, kernel):
    """The 3x3 "same" convolution of x with every pixel copied 2x2, without making the copy.

    x: (B, H, W, C_in), kernel: (3, 3, C_in, C_out) -> (B, 2H, 2W, C_out). The output pixel at
    (2i + a, 2j + b) is a 2x2 convolution of the zero-padded x at (i + a, j + b), with kernel
    (a, b) of ``fold`` applied to rows, then columns: 4 x 4 multiplies per pixel of x instead
    of 4 x 9 on the copy. The same numbers to float32 rounding (taps are summed first).
    """
    h, w = x.shape[1], x.shape[2]
    p = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # (B, H+2, W+2, C_in)
    row_taps = fold([kernel[i] for i in range(3)])  # [a]: 2 taps, each (3 columns, C_in, C_out)
    y = [[ops.conv(p[:, a:a + h + 1, b:b + w + 1], ops.stack(taps, axis=1))  # (B, H, W, C_out)
          for b, taps in enumerate(fold([ops.stack(row_taps[a])[:, j] for j in range(3)]))]
         for a in range(2)]  # the 2x2 kernel (a, b): (2 rows, 2 columns, C_in, C_out)
    y = ops.stack([ops.stack(by_b, axis=3) for by_b in y], axis=2)  # (B, H, a, W, b, C_out)
    return ops.reshape(y, (-1, 2 * h, 2 * w, kernel.shape[3]))


class Upsample(keras.Sequential):
    """Double H and W: nearest-neighbour copy, then a 3x3 convolution to smooth it.
    (With ``UPSAMPLING = "folded"``, and sides known when traced: ``folded_upsample_conv``.)"""

    def __init__(self, channels, **kwargs):
        super().__init__([keras.layers.UpSampling2D(2), conv(channels, 3)], **kwargs)

    def call(self, x, training=None, mask=None):  # (B, H, W, C) -> (B, 2H, 2W, channels)
        check_choice("upsampling", UPSAMPLING, UPSAMPLINGS)
        if UPSAMPLING == "copy" or not all(isinstance(side, int) for side in x.shape[1:3]):
            return super().call(x, training=training, mask=mask)
        convolution = self.layers[1]
        return folded_upsample_conv(x, convolution.kernel) + convolution.bias


def upsample(channels):
    """Double H and W: nearest-neighbour copy, then a 3x3 convolution to smooth it."""
    return Upsample(channels)


class ResBlock(keras.layers.Layer):
    """out = skip(x) + conv(swish(GN(conv(swish(GN(x))) [+ time embedding]))).

    (B, H, W, C_in) -> (B, H, W, channels). The UNet's blocks also add a projection of the
    timestep embedding (B, 4*C0) to every pixel between the two convolutions; the VAE's do not.
    ``skip`` is the identity, or a 1x1 convolution when the block changes the width.
    """

    def __init__(self, channels, norm_groups=32, time_conditioned=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm1, self.conv1 = group_norm(norm_groups), conv(channels, 3)
        if time_conditioned:
            self.time_proj = keras.layers.Dense(channels)
        self.norm2, self.conv2 = group_norm(norm_groups), conv(channels, 3)

    def build(self, x_shape, time_embedding_shape=None):
        self.skip = conv(self.channels, 1) if x_shape[-1] != self.channels else None

    def call(self, x, time_embedding=None):
        h = self.conv1(ops.silu(self.norm1(x)))
        if time_embedding is not None:  # (B, 4*C0) -> (B, 1, 1, channels), same for every pixel
            h = h + self.time_proj(ops.silu(time_embedding))[:, None, None, :]
        h = self.conv2(ops.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class PublishedWeights:
    """Mixin for the four models: ``load_weights`` reads KerasCV's published .h5 files
    (legacy Keras format, matched layer by layer in order) and ``save_weights`` writes them."""

    def load_weights(self, filepath):
        from sdlearn.weights import load_h5

        load_h5(self, filepath)

    def save_weights(self, filepath):
        from sdlearn.weights import save_h5

        save_h5(self, filepath)
