"""CLIP's text encoder: 77 token ids -> 77 vectors that the UNet attends to.

Stable Diffusion v1 uses the text half of OpenAI's CLIP ViT-L/14 (Radford et al., 2021),
frozen. A pre-norm transformer, causal like GPT: token i only sees tokens 0..i. SD conditions
on the whole last hidden state (B, 77, 768), not on CLIP's single pooled vector.
"""

import keras
from keras import ops

from sdlearn.config import TextEncoderConfig
from sdlearn.layers import Composite, MultiHeadAttention, PublishedWeights


def quick_gelu(x):
    """CLIP's cheap GELU: x * sigmoid(1.702 x), within 0.02 of x * Phi(x) everywhere."""
    return x * ops.sigmoid(1.702 * x)


class TokenAndPositionEmbedding(Composite):
    """x_i = E[token_i] + P[i]: a learned vector per token id plus one per position.

    (B, 77) int -> (B, 77, width). Attention itself ignores order; P tells the model where
    each token stands.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = keras.layers.Embedding(config.vocab_size, config.width)
        self.position_embedding = keras.layers.Embedding(config.max_length, config.width)
        self.max_length = config.max_length

    def call(self, tokens):
        if isinstance(tokens.shape[1], int) and tokens.shape[1] > self.max_length:  # known length
            raise ValueError(f"got {tokens.shape[1]} tokens per prompt; this text encoder has "
                             f"{self.max_length} positions, so at most {self.max_length}")
        positions = ops.arange(ops.shape(tokens)[1])  # (77,): 0, 1, ..., 76
        return self.token_embedding(tokens) + self.position_embedding(positions)[None]


class CLIPLayer(Composite):
    """One pre-norm transformer layer: (B, T, width) -> (B, T, width).

    x = x + Attention(LN(x))          causal self-attention, num_heads heads
    x = x + W2 quick_gelu(W1 LN(x))   MLP, width -> mlp_width -> width
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        head_size = config.width // config.num_heads
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = MultiHeadAttention(config.num_heads, head_size, qkv_bias=True)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.fc1 = keras.layers.Dense(config.mlp_width)
        self.fc2 = keras.layers.Dense(config.width)

    def call(self, x):
        x = x + self.attention(self.norm1(x), causal=True)
        return x + self.fc2(quick_gelu(self.fc1(self.norm2(x))))


class TextEncoder(PublishedWeights, keras.Model):
    """tokens (B, 77) int32 -> context (B, 77, width): the last hidden state, layer-normed.

    Shorter inputs (B, T <= 77) work too and give the first T rows of the same output:
    attention is causal, so a position never sees the ones after it (training uses this).
    With ``TextEncoderConfig()`` (SD v1) it has 123,060,480 parameters and loads KerasCV's
    ``kcv_encoder.h5``.
    """

    def __init__(self, config=TextEncoderConfig(), **kwargs):
        tokens = keras.Input((None,), dtype="int32", name="tokens")  # T <= max_length
        x = TokenAndPositionEmbedding(config)(tokens)  # (B, 77, 768)
        for _ in range(config.num_layers):
            x = CLIPLayer(config)(x)  # (B, 77, 768)
        context = keras.layers.LayerNormalization(epsilon=1e-5)(x)
        super().__init__(tokens, context, **kwargs)
        self.config = config
