"""Where a guided step's time goes: sdlearn's SD v1 UNet timed layer by layer under XLA.

    python benchmarks/unet_layers.py [--repeats 3]   # 81-90 s on 2 cores

benchmark.py times the whole UNet call and compares it with one large matmul. This takes the
same call (batch 2, as in a guided step; random weights) apart: every top-level layer of the
UNet (ResBlocks, transformers, down- and up-sampling convolutions, concatenations) is compiled
alone by XLA and timed on the inputs it gets inside the model. Per kind of layer and input
shape it prints how many there are, their time, their FLOPs (convolutions, dense layers and
the two attention products, counted as PyTorch's FLOP counter counts them), FLOP/s as a share of
the float32 matmul rate measured before and after, and the milliseconds lost against that rate.
The FLOPs add up to ``benchmark.UNET_FLOP``, PyTorch's count (checked); the times add up to
about the whole call (printed).
"""

import argparse
import os

from benchmark import UNET_FLOP, best_time, keras_matmul, matmul_rate  # the sibling script


def layer_flop(layer, x):
    """FLOPs of one call of a top-level UNet layer on x (B, H, W, C_in), or (B, C) for the
    timestep MLP; 0 for layers that only move data (concatenation, the last norm and swish)."""
    import keras

    from sdlearn.layers import ResBlock
    from sdlearn.unet import SpatialTransformer

    if isinstance(layer, keras.layers.Dense):  # the timestep MLP: (B, 320) -> (B, 1280) -> ..
        return 2 * x.shape[0] * int(keras.ops.prod(layer.kernel.shape))
    b, h, w, c_in = x.shape
    pixels = b * h * w
    if isinstance(layer, ResBlock):  # two 3x3 convs, the 1x1 skip if widths differ, time proj
        c = layer.channels
        skip = c_in * c if c_in != c else 0
        time_proj = 2 * b * int(keras.ops.prod(layer.time_proj.kernel.shape))
        return 2 * pixels * (9 * c_in * c + 9 * c * c + skip) + time_proj
    if isinstance(layer, SpatialTransformer):  # T = H*W tokens of width C, 77 context tokens
        c, t = c_in, h * w
        dense = 2 * pixels * c * c * (2 + 4 + 2 + 8 + 4)  # proj in/out, self q k v o, cross q o, FF
        context = 2 * 2 * b * 77 * 768 * c  # cross-attention's keys and values
        products = 2 * 2 * b * t * (t + 77) * c  # q k^T and weights @ v, self and cross
        return dense + context + products
    if isinstance(layer, (keras.layers.Conv2D, keras.Sequential)):  # conv, down/upsampling
        conv = layer if isinstance(layer, keras.layers.Conv2D) else layer.layers[-1]
        out_pixels = int(keras.ops.prod(layer.compute_output_shape(x.shape)[:-1]))
        return 2 * out_pixels * int(keras.ops.prod(conv.kernel.shape))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per layer (best)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import ops

    from sdlearn.config import SD_V1
    from sdlearn.unet import UNet

    tf.get_logger().setLevel("ERROR")  # one compiled function per layer is the plan
    size = 256  # px: the guided step benchmark.py times (latent 32x32)
    side = size // 8
    unet = UNet(SD_V1.unet)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((2, side, side, 4)).astype("float32"),
              np.full((2,), 500.0, "float32"), rng.standard_normal((2, 77, 768)).astype("float32")]

    # The tensors each layer receives inside the model: one functional model that outputs them
    # all. A layer's call and its arguments are the first (only) node Keras recorded for it.
    layers = [layer for layer in unet.layers if not isinstance(layer, keras.layers.InputLayer)]
    symbolic = {id(t): t for layer in layers for t in layer._inbound_nodes[0].input_tensors}
    probe = keras.Model(unet.inputs, list(symbolic.values()))
    concrete = dict(zip(symbolic, (tf.constant(v) for v in probe(inputs))))

    matmul = keras_matmul()
    rates = [matmul_rate(matmul)]
    rows, total_s, total_flop = {}, 0.0, 0
    for layer in layers:
        call_args, call_kwargs = layer._inbound_nodes[0].arguments.fill_in(concrete)
        fn = tf.function(lambda *a, layer=layer, **k: layer(*a, **k), jit_compile=True)
        out = fn(*call_args, **call_kwargs)  # compiles
        seconds, _ = best_time(lambda: ops.convert_to_numpy(fn(*call_args, **call_kwargs)),
                               args.repeats)
        x = call_args[0][0] if isinstance(call_args[0], (list, tuple)) else call_args[0]
        flop = layer_flop(layer, x)
        key = (type(layer).__name__, tuple(x.shape), tuple(out.shape))
        count, s, f = rows.get(key, (0, 0.0, 0))
        rows[key] = (count + 1, s + seconds, f + flop)
        total_s, total_flop = total_s + seconds, total_flop + flop
    rates.append(matmul_rate(matmul))
    rate = max(rates)
    assert abs(total_flop - 2 * UNET_FLOP[side]) < 0.01 * total_flop, total_flop

    whole = tf.function(lambda *x: unet(list(x)), jit_compile=True)
    whole(*inputs)
    whole_s, _ = best_time(lambda: ops.convert_to_numpy(whole(*inputs)), args.repeats)

    print(f"SD v1 UNet, {size} px, batch 2, float32, XLA per layer; matmul "
          f"{min(rates) / 1e9:.0f}-{rate / 1e9:.0f} GFLOP/s (shares against {rate / 1e9:.0f})\n")
    print("| layer | input | output | n | ms | GFLOP | GFLOP/s (% of matmul) | ms lost |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for (name, shape_in, shape_out), (count, s, f) in rows.items():
        achieved = f"{f / s / 1e9:.0f} ({100 * f / s / rate:.0f}%)" if f else ""
        print(f"| {name} | {shape_in} | {shape_out} | {count} | {s * 1e3:.1f} | {f / 1e9:.2f} "
              f"| {achieved} | {(s - f / rate) * 1e3:.0f} |")
    print(f"\nlayers one by one: {total_s:.2f} s, {total_flop / 1e12:.3f} TFLOP, "
          f"{100 * total_flop / total_s / rate:.0f}% of the matmul rate; ideal at that rate "
          f"{total_flop / rate:.2f} s")
    print(f"the whole UNet call: {whole_s:.2f} s, {100 * total_flop / whole_s / rate:.0f}%")


if __name__ == "__main__":
    main()
