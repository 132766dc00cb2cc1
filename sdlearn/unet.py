"""The denoising UNet eps_theta(x_t, t, c): which noise was added to this latent?

Input: a noisy latent x_t (B, h, w, 4), the timestep t (B,) and the text context c (B, 77, 768).
Output: the predicted noise, same shape as x_t. Shapes below are for SD v1 at 512 px
(h = w = 64); every level down halves h and w and the path back up doubles them again.

    latent 64x64x4 -> conv -> 64x64x320 --[ResBlock, Transformer] x2--> 64 (skip x3)
        -> 32x32x640  -> 16x16x1280 -> 8x8x1280 (no attention)   the down path, 12 skips
        -> middle: ResBlock, Transformer, ResBlock at 8x8x1280
        -> up path: 3 blocks per level, each first concatenates one skip (last in, first out)
        -> GroupNorm, swish, conv -> 64x64x4 = eps
"""

import math

import keras
from keras import ops

from sdlearn.config import UNetConfig
from sdlearn.layers import (Composite, MultiHeadAttention, PublishedWeights, ResBlock, conv,
                            downsample, group_norm, upsample)


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal features of t, as in the Transformer's positions (Vaswani et al., 2017).

    (B,) -> (B, dim) = [cos(t * f_0..f_{dim/2-1}), sin(t * f_0..)], f_i = max_period^(-2i/dim):
    fast waves tell nearby steps apart, slow ones give the overall noise level. Cosines first,
    as SD's weights expect.
    """
    half = dim // 2
    frequencies = ops.exp(-math.log(max_period) * ops.arange(half, dtype="float32") / half)
    angles = ops.cast(timesteps, "float32")[:, None] * frequencies[None, :]  # (B, dim/2)
    return ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1)


class SpatialTransformer(Composite):
    """Attention over the pixels of a feature map: (B, H, W, C) -> (B, H, W, C), residual.

    GN, 1x1 conv, flatten to (B, H*W, C) tokens, then one transformer block:
        x = x + SelfAttention(LN(x))              pixels look at each other
        x = x + CrossAttention(LN(x), context)    pixels look at the prompt's 77 tokens
        x = x + W2 GEGLU(W1 LN(x))                feed-forward, C -> 4C -> C
    then back to (B, H, W, C), 1x1 conv, plus the input. Cross-attention is the only place
    where the text enters the UNet.
    """

    def __init__(self, channels, num_heads, norm_groups, **kwargs):
        super().__init__(**kwargs)
        head_size = channels // num_heads
        self.norm = group_norm(norm_groups)
        self.proj_in = conv(channels, 1)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.self_attention = MultiHeadAttention(num_heads, head_size, qkv_bias=False)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.cross_attention = MultiHeadAttention(num_heads, head_size, qkv_bias=False)
        self.norm3 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.geglu = keras.layers.Dense(8 * channels)  # value and gate, 4C each
        self.ff_out = keras.layers.Dense(channels)
        self.proj_out = conv(channels, 1)

    def call(self, x, context):
        b, h, w, c = ops.shape(x)
        tokens = ops.reshape(self.proj_in(self.norm(x)), (b, h * w, c))  # (B, HW, C)
        tokens = tokens + self.self_attention(self.norm1(tokens))
        tokens = tokens + self.cross_attention(self.norm2(tokens), context)
        value, gate = ops.split(self.geglu(self.norm3(tokens)), 2, axis=-1)  # 2 x (B, HW, 4C)
        tokens = tokens + self.ff_out(value * ops.gelu(gate, approximate=True))  # GEGLU
        return x + self.proj_out(ops.reshape(tokens, (b, h, w, c)))


class UNet(PublishedWeights, keras.Model):
    """eps_theta([latent (B, h, w, 4), timestep (B,), context (B, 77, 768)]) -> (B, h, w, 4).

    h and w must be multiples of ``config.downsampling_factor`` (8 for SD v1, so images are
    multiples of 64 px). With ``UNetConfig()`` it has 859,520,964 parameters and loads
    KerasCV's ``kcv_diffusion_model.h5``.
    """

    def __init__(self, config=UNetConfig(), **kwargs):
        c = config
        latent = keras.Input((None, None, c.latent_channels), name="latent")
        timestep = keras.Input((), name="timestep")
        context = keras.Input((None, c.context_dim), name="context")

        def res_block(x, channels):
            return ResBlock(channels, c.norm_groups, time_conditioned=True)(x, t)

        def transformer(x, channels):
            return SpatialTransformer(channels, c.num_heads, c.norm_groups)(x, context)

        # The timestep: sinusoids (B, 320) -> MLP -> (B, 1280), added inside every ResBlock.
        t = timestep_embedding(timestep, c.channels[0])
        t = keras.layers.Dense(c.time_embedding_dim, activation="silu")(t)
        t = keras.layers.Dense(c.time_embedding_dim)(t)

        # Down: keep every intermediate x as a skip for the way up.
        x = conv(c.channels[0], 3)(latent)  # (B, 64, 64, 320)
        skips = [x]
        for level, (channels, has_attention) in enumerate(zip(c.channels, c.attention)):
            for _ in range(c.res_blocks):
                x = res_block(x, channels)
                if has_attention:
                    x = transformer(x, channels)
                skips.append(x)
            if level < len(c.channels) - 1:
                x = downsample(channels, padding=1)(x)  # (B, h/2, w/2, channels)
                skips.append(x)

        # Middle, at the lowest resolution (8x8x1280 for 512 px).
        x = transformer(res_block(x, c.channels[-1]), c.channels[-1])
        x = res_block(x, c.channels[-1])

        # Up: one more block per level than on the way down; each eats one skip.
        for level in reversed(range(len(c.channels))):
            channels, has_attention = c.channels[level], c.attention[level]
            for _ in range(c.res_blocks + 1):
                x = keras.layers.Concatenate()([x, skips.pop()])
                x = res_block(x, channels)
                if has_attention:
                    x = transformer(x, channels)
            if level > 0:
                x = upsample(channels)(x)  # (B, 2h, 2w, channels)

        x = keras.layers.Activation("silu")(group_norm(c.norm_groups)(x))
        eps = conv(c.latent_channels, 3)(x)  # (B, 64, 64, 4)
        super().__init__([latent, timestep, context], eps, **kwargs)
        self.config = config
