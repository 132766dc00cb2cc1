"""sdlearn: Stable Diffusion v1 rebuilt piece by piece in Keras 3.

    from sdlearn import StableDiffusion
    images = StableDiffusion("tiny").text_to_image("a red circle in the top left", seed=0)

The names below are imported on first use, so ``import sdlearn.shapes`` stays light (no Keras).
"""

import importlib

_EXPORTS = {
    "StableDiffusion": "sdlearn.pipeline",
    "Tokenizer": "sdlearn.tokenizer",
    "TextEncoder": "sdlearn.text_encoder",
    "UNet": "sdlearn.unet",
    "Decoder": "sdlearn.vae",
    "ImageEncoder": "sdlearn.vae",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sdlearn' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
