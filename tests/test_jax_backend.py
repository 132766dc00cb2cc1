"""sdlearn's models on the Keras JAX backend, as the GPU machine runs them (JAX, no TensorFlow).

The test process itself runs Keras on TensorFlow, and a Keras process has one backend, so the
check runs in a fresh Python with KERAS_BACKEND=jax: the toy pipeline builds (JAX traces each
functional model with symbolic dimensions, where a Python comparison of a length is an
error), generates with the einsum and the blocked attention and with Winograd's convolutions and
folded upsampling on the same weights, and never imports TensorFlow.
"""

import os
import subprocess
import sys

CHECK = """
import sys
import numpy as np
from sdlearn import layers
from sdlearn.pipeline import StableDiffusion
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
layers.BLOCKED_ABOVE, layers.BLOCK_SCORES = 64, 2048  # block the toy model's 8x8 attention too
winograd, traced = layers.winograd_conv, []
layers.winograd_conv = lambda x, kernel: traced.append(x.shape) or winograd(x, kernel)
folded, traced_folded = layers.folded_upsample_conv, []
layers.folded_upsample_conv = lambda x, k: traced_folded.append(x.shape) or folded(x, k)
images = {}
for kernel, convolution in (("einsum", "direct"), ("blocked", "direct"), ("einsum", "winograd")):
    layers.ATTENTION, layers.CONVOLUTION = kernel, convolution  # read when a model is traced
    layers.UPSAMPLING = "folded" if convolution == "winograd" else "copy"
    sd = StableDiffusion("test", weights=None)
    if not images:
        weights = {name: getattr(sd, name).get_weights()
                   for name in ("text_encoder", "unet", "decoder")}
    else:  # the first pipeline's weights
        for name, values in weights.items():
            getattr(sd, name).set_weights(values)
    images[kernel, convolution] = sd.text_to_image("a red circle", num_steps=2, seed=0).astype(int)
plain = images["einsum", "direct"]
assert plain.shape == (1, 64, 64, 3), plain.shape
print("folded upsamplings traced:", len(traced_folded))
print("winograd convolutions traced:", len(traced))
print("max pixel difference", max(np.abs(image - plain).max() for image in images.values()))
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_pipeline_on_the_jax_backend():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert int(lines[-4].split()[-1]) > 0  # the third pipeline folded its upsamplings
    assert int(lines[-3].split()[-1]) > 0  # and took the Winograd path
    assert int(lines[-2].split()[-1]) <= 1  # float32 rounding can move a pixel by one level
    assert lines[-1] == "tensorflow imported: False"
