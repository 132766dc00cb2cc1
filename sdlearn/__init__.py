"""sdlearn: Stable Diffusion v1 rebuilt piece by piece in Keras 3."""
