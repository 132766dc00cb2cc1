"""The variational autoencoder: 512x512x3 pixels <-> a 64x64x4 latent, 48x fewer numbers.

Diffusion runs in this latent space (Rombach et al., 2022, "latent diffusion"): the encoder
compresses away detail the eye barely sees, the UNet works on 64x64x4 instead of 512x512x3,
and the decoder paints the detail back. Widths below are SD v1's.
"""

import keras
from keras import ops

from sdlearn.config import VAEConfig
from sdlearn.layers import (Composite, PublishedWeights, ResBlock, attention, conv, downsample,
                            group_norm, upsample)


class VAEAttention(Composite):
    """One-head self-attention over pixels: (B, H, W, C) -> (B, H, W, C), residual.

    Used once, at the lowest resolution, so the decoder can make far-apart pixels agree.
    q, k, v and the output projection are 1x1 convolutions, i.e. Dense layers per pixel.
    """

    def __init__(self, channels, norm_groups, **kwargs):
        super().__init__(**kwargs)
        self.norm = group_norm(norm_groups)
        self.q, self.k, self.v = conv(channels, 1), conv(channels, 1), conv(channels, 1)
        self.proj_out = conv(channels, 1)

    def call(self, x):
        b, h, w, c = ops.shape(x)
        y = self.norm(x)
        q, k, v = (ops.reshape(f(y), (b, h * w, 1, c)) for f in (self.q, self.k, self.v))
        out = ops.reshape(attention(q, k, v), (b, h, w, c))  # (B, H, W, C)
        return x + self.proj_out(out)


def _middle(channels, norm_groups):
    """ResBlock, attention, ResBlock: the same middle in the encoder and the decoder."""
    return [ResBlock(channels, norm_groups), VAEAttention(channels, norm_groups),
            ResBlock(channels, norm_groups)]


class Decoder(PublishedWeights, keras.Sequential):
    """Scaled latent (B, h, w, 4) -> image (B, 8h, 8w, 3), values about in [-1, 1].

    Input is the latent times ``latent_scale`` (what the UNet works with); the first layer
    undoes the scale. With ``VAEConfig()``: 49,490,199 parameters, loads ``kcv_decoder.h5``.
    """

    def __init__(self, config=VAEConfig(), **kwargs):
        c, widths = config, config.channels[::-1]  # (512, 512, 256, 128): deep to shallow
        layers = [keras.Input((None, None, c.latent_channels)),
                  keras.layers.Rescaling(1.0 / c.latent_scale),
                  conv(c.latent_channels, 1),  # "post-quant conv"
                  conv(widths[0], 3),
                  *_middle(widths[0], c.norm_groups)]  # (B, 64, 64, 512)
        for level, width in enumerate(widths):
            if level > 0:
                layers.append(upsample(widths[level - 1]))  # 64 -> 128 -> 256 -> 512 px
            layers += [ResBlock(width, c.norm_groups) for _ in range(c.decoder_res_blocks)]
        layers += [group_norm(c.norm_groups), keras.layers.Activation("silu"), conv(3, 3)]
        super().__init__(layers, **kwargs)
        self.config = config


class LatentMean(keras.layers.Layer):
    """Moments (B, h, w, 2*4) = [mean, log-variance] -> scale * mean (B, h, w, 4).

    The encoder predicts a Gaussian per latent pixel; like KerasCV we keep its mean (no
    sampling), times ``latent_scale`` so the latents have roughly unit variance.
    """

    def __init__(self, latent_channels, latent_scale, **kwargs):
        super().__init__(**kwargs)
        self.latent_channels, self.latent_scale = latent_channels, latent_scale

    def call(self, moments):
        return moments[..., : self.latent_channels] * self.latent_scale


class ImageEncoder(PublishedWeights, keras.Sequential):
    """Image (B, H, W, 3) in [-1, 1] -> scaled latent (B, H/8, W/8, 4).

    With ``VAEConfig()``: 34,163,664 parameters, loads KerasCV's ``vae_encoder.h5``.
    """

    def __init__(self, config=VAEConfig(), **kwargs):
        c = config
        layers = [keras.Input((None, None, 3)), conv(c.channels[0], 3)]
        for level, width in enumerate(c.channels):  # 128, 256, 512, 512
            layers += [ResBlock(width, c.norm_groups) for _ in range(c.encoder_res_blocks)]
            if level < len(c.channels) - 1:  # halve H and W; pad right and bottom only
                layers.append(downsample(width, padding=((0, 1), (0, 1))))
        layers += [*_middle(c.channels[-1], c.norm_groups),
                   group_norm(c.norm_groups), keras.layers.Activation("silu"),
                   conv(2 * c.latent_channels, 3),
                   conv(2 * c.latent_channels, 1),  # "quant conv"
                   LatentMean(c.latent_channels, c.latent_scale)]
        super().__init__(layers, **kwargs)
        self.config = config
