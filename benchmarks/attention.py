"""sdlearn's three attention kernels on Stable Diffusion's attention shapes, compiled by XLA.

    python benchmarks/attention.py [--repeats 5] [--backend tensorflow]   # ~1 min on 2 cores

One guided step at 512 px calls attention with these shapes (batch 2: the prompt and the
empty prompt; 8 heads; head size 40, 80 or 160), plus the VAE decoder's one head of 512 at
64x64. For each shape and kernel (``sdlearn.layers.ATTENTION``: "einsum", "blocked", "fused")
it prints the best of ``--repeats`` calls of the compiled function after a warm-up, and the
largest difference from the einsums. Random inputs: the numbers are speed.
"""

import argparse
import os

from benchmark import best_time  # the sibling script's timer (this folder is on sys.path)

SHAPES = {  # name: (batch, queries, keys, heads, head size)
    "UNet 64x64 self": (2, 4096, 4096, 8, 40),
    "UNet 64x64 cross": (2, 4096, 77, 8, 40),
    "UNet 32x32 self": (2, 1024, 1024, 8, 80),
    "UNet 16x16 self": (2, 256, 256, 8, 160),
    "VAE 64x64 (1 head)": (1, 4096, 4096, 1, 512),
}


def compiled(fn):
    """fn compiled whole by XLA, on whichever backend Keras runs."""
    import keras
    if keras.backend.backend() == "jax":
        import jax
        return jax.jit(fn)
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # one function per shape and kernel is the plan, not retracing
    return tf.function(fn, jit_compile=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no allocator warnings in the table
    import numpy as np
    from keras import ops

    from sdlearn import layers

    rng = np.random.default_rng(0)
    print(f"| shape (B, Tq, Tk, heads, d) | {' | '.join(layers.ATTENTION_KERNELS)} "
          "| blocked rows | max diff |")
    print("|---|" + "---:|" * (len(layers.ATTENTION_KERNELS) + 2))
    for name, (b, tq, tk, heads, d) in SHAPES.items():
        q = rng.standard_normal((b, tq, heads, d)).astype("float32")
        k, v = (rng.standard_normal((b, tk, heads, d)).astype("float32") for _ in range(2))
        cells, outputs = [], {}
        for kernel in layers.ATTENTION_KERNELS:
            fn = compiled(lambda q, k, v, kernel=kernel: layers.attention(q, k, v, kernel=kernel))
            outputs[kernel] = ops.convert_to_numpy(fn(q, k, v))  # warm-up: compiles
            best, _ = best_time(lambda: ops.convert_to_numpy(fn(q, k, v)), args.repeats)
            cells.append(f"{best * 1e3:.0f} ms")
        diff = max(np.abs(out - outputs["einsum"]).max() for out in outputs.values())
        print(f"| {name} {(b, tq, tk, heads, d)} | {' | '.join(cells)} "
              f"| {layers.query_block(tq, tk)} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
