"""Model sizes as data: one small dataclass per model, and the presets the course uses.

Every model in sdlearn is built from one of these. ``SD_V1`` is Stable Diffusion v1 exactly
(the sizes of the published weights); ``TEST`` is a toy size for fast unit tests (random
weights, never shown as a result); ``TINY`` is the small model sdlearn trains itself on the
synthetic shapes world (see ``sdlearn/train.py``).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP's text transformer. SD v1 uses CLIP ViT-L/14's: 12 layers, 768 wide."""

    vocab_size: int = 49408  # CLIP's byte-pair vocabulary (49,406 merges+bytes, start, end)
    max_length: int = 77  # every prompt is padded (with the end token) to 77 tokens
    width: int = 768  # d_model: the size of every token's vector
    num_layers: int = 12
    num_heads: int = 12  # head size = width / num_heads = 64
    mlp_width: int = 3072  # 4 * width


@dataclass(frozen=True)
class UNetConfig:
    """The noise predictor eps_theta(x_t, t, c).

    ``channels[i]`` is the width at resolution level i (level 0 is the latent's own size,
    each later level is 2x smaller); ``attention[i]`` says whether that level has spatial
    transformers (self- and cross-attention). SD v1: four levels, 64 -> 32 -> 16 -> 8 at 512 px.
    """

    channels: tuple = (320, 640, 1280, 1280)
    attention: tuple = (True, True, True, False)
    res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    num_heads: int = 8  # heads per attention; head size = channels[i] / num_heads
    context_dim: int = 768  # width of the text encoder's output
    latent_channels: int = 4
    norm_groups: int = 32  # GroupNorm groups; must divide every width

    @property
    def time_embedding_dim(self):
        # Sinusoids of size channels[0] are lifted by an MLP to 4x that: 320 -> 1280 in SD v1.
        return 4 * self.channels[0]

    @property
    def downsampling_factor(self):
        # Each level after the first halves the latent: 3 halvings -> latent sides % 8 == 0.
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class VAEConfig:
    """The autoencoder: image (H, W, 3) <-> latent (H/f, W/f, latent_channels).

    ``channels`` are the encoder's widths from the image side; the decoder mirrors them.
    """

    channels: tuple = (128, 256, 512, 512)
    latent_channels: int = 4
    norm_groups: int = 32
    # Latents are multiplied by this so they have roughly unit variance, which the noise
    # schedule assumes. 0.18215 was measured by the SD authors on their training images.
    latent_scale: float = 0.18215
    encoder_res_blocks: int = 2
    decoder_res_blocks: int = 3

    @property
    def downsampling_factor(self):
        return 2 ** (len(self.channels) - 1)  # 8 in SD v1


@dataclass(frozen=True)
class StableDiffusionConfig:
    text_encoder: TextEncoderConfig
    unet: UNetConfig
    vae: VAEConfig
    image_size: int  # the default side of generated images, in pixels
    guidance_scale: float = 7.5  # the default classifier-free guidance scale (SD's)


SD_V1 = StableDiffusionConfig(TextEncoderConfig(), UNetConfig(), VAEConfig(), image_size=512)

# Toy sizes for unit tests: the same code paths in milliseconds.
TEST = StableDiffusionConfig(
    TextEncoderConfig(width=32, num_layers=2, num_heads=4, mlp_width=64),
    UNetConfig(channels=(32, 64, 64), attention=(True, True, False), num_heads=4,
               context_dim=32, norm_groups=8),
    VAEConfig(channels=(16, 32, 32, 32), norm_groups=8, encoder_res_blocks=1,
              decoder_res_blocks=1),
    image_size=64,
)

# The model sdlearn trains itself on the synthetic shapes world (sdlearn/shapes.py, 64x64 images)
# and ships in sdlearn/data/tiny (``sdlearn train`` rebuilds it). Same classes as SD v1, sizes
# chosen for a 2-core laptop: the whole training must fit in 20 minutes, sampling 50 guided
# steps in well under a second, and the four weight files in 25 MB.
TINY = StableDiffusionConfig(
    # Width 32, 2 layers: the world has ~20 words and captions of at most 14 tokens. The
    # token table stays CLIP's full 49408 rows (the same tokenizer as SD), so it holds most of
    # the text encoder's parameters (1.58 M of 1.61 M): width is what the file size pays for.
    TextEncoderConfig(width=32, num_layers=2, num_heads=4, mlp_width=128),
    # The latent is 8x8x4 (64 px / 8, 4 channels, as in SD). Two levels, 8x8 -> 4x4, both with
    # attention: at 8x8 self-attention is cheap (64 tokens), and cross-attention at both sizes
    # lets the prompt decide where (8x8) and what (4x4). 32 -> 64 channels, one ResBlock per
    # level: ~60 MFLOP per call, so a training step of 64 latents costs ~0.4 s of CPU.
    UNetConfig(channels=(32, 64), attention=(True, True), res_blocks=1, num_heads=4,
               context_dim=32, norm_groups=8),
    # Four levels as in SD, so 64x64 -> 8x8 (factor 8), but 8 channels at full resolution
    # instead of 128: these images are flat colours and sharp edges, no texture. Most of the
    # cost sits in the convolutions at 64x64 and 32x32, so the widths stay small there
    # (~100 MFLOP to encode and decode one image; SD's would cost 170 GFLOP at 64 px).
    # GroupNorm with 2 groups, not 8: a group of a single channel would be normalised to
    # mean 0 on its own, and the channels would lose their levels relative to each other,
    # which is how they tell colours apart.
    VAEConfig(channels=(8, 16, 16, 32), norm_groups=2, encoder_res_blocks=1,
              decoder_res_blocks=1,
              # 1 / std of the trained encoder's latents over the training images, measured by
              # sdlearn.train (SD's 0.18215 was measured the same way); the manifest of the
              # shipped weights records the same number.
              latent_scale=0.4409),
    image_size=64,
    # Measured with `sdlearn evaluate --guidance 1 3 5` on the shipped weights (README): at 3,
    # 93% of the images of seen captions are right in every attribute at once, at 5 86%, at 1
    # (no guidance) 62.5%; at 5 the size is right less often (97% -> 93%).
    guidance_scale=3.0,
)

PRESETS = {"sd-v1": SD_V1, "tiny": TINY, "test": TEST}


def get_config(name):
    """The preset called ``name`` ("sd-v1", "tiny", "test")."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model configuration {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]
