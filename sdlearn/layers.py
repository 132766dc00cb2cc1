"""Building blocks shared by the text encoder, the UNet and the VAE.

Shapes use B = batch, T = tokens (or pixels, H*W, once an image is flattened), heads = attention
heads, d = head size, C = channels. Images are channels-last: (B, H, W, C).
"""

import math

import keras
from keras import ops


# The attention switch (a fast path, see sdlearn/fast.py). False: the einsums below, which the
# course reads and whose weights it plots. True: the backend's fused kernel,
# ``keras.ops.dot_product_attention``: on a GPU (JAX: cuDNN flash attention; PyTorch: SDPA) it
# never writes the (Tq, Tk) score matrix to memory, which at 64x64 latents is 4096 x 4096 per
# head. The TensorFlow backend has no fused kernel and runs the same einsums. Set it before a
# model's first call: a compiled model keeps the attention it was traced with.
FUSED_ATTENTION = False


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


def attention(q, k, v, causal=False, fused=None):
    """Scaled dot-product attention: each query's output is a weighted mean of the values.

    q: (B, Tq, heads, d), k and v: (B, Tk, heads, d) -> (B, Tq, heads, d).
    ``fused`` (default: the module's ``FUSED_ATTENTION``) hands the same computation to the
    backend's kernel, which takes the same (B, T, heads, d) layout and the same causal mask
    (``is_causal``: query i sees keys 0..i); the VAE's attention is the one-head case.
    """
    if FUSED_ATTENTION if fused is None else fused:
        return ops.dot_product_attention(q, k, v, is_causal=causal)
    return ops.einsum("bhqk,bkhd->bqhd", attention_weights(q, k, causal), v)


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


def conv(channels, kernel_size=3):
    """A convolution that keeps height and width (zero padding (k-1)/2 on each side)."""
    return keras.layers.Conv2D(channels, kernel_size, padding="same")


def group_norm(groups):
    """GroupNorm: normalise each group of channels over H, W and the group (Wu & He, 2018).

    Unlike BatchNorm it does not depend on the batch, so one image behaves the same in any batch.
    """
    return keras.layers.GroupNormalization(groups, epsilon=1e-5)


def downsample(channels, padding):
    """Halve H and W with a 3x3 stride-2 convolution (no pooling in SD)."""
    return keras.Sequential([keras.layers.ZeroPadding2D(padding),
                             keras.layers.Conv2D(channels, 3, strides=2)])


def upsample(channels):
    """Double H and W: nearest-neighbour copy, then a 3x3 convolution to smooth it."""
    return keras.Sequential([keras.layers.UpSampling2D(2), conv(channels, 3)])


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
