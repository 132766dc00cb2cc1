"""Where a compiled UNet's memory goes: sdlearn's UNet through XLA one stage at a time.

    python benchmarks/compile_memory.py --convolution winograd --upsampling folded  # ~70 s

With Winograd's convolutions a 512 px generation peaks at the UNet's first call, which traces
the model, converts it to XLA's HLO, optimises the HLO, compiles it to machine code and runs it.
This takes those stages one at a time on the UNet alone (random weights, batch 2 as in a guided
step, a 64x64 latent by default: 512 px), TensorFlow backend, and prints the process's resident
memory after each and what each added, with the size of the HLO text. Run it once per setting:
each process compiles one UNet, so that the numbers are that setting's alone.
"""

import argparse
import os
import time


def rss_gb():
    """The process's resident memory now, in GB (Linux: /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmRSS in /proc/self/status: this script needs Linux")


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    from sdlearn import layers
    from sdlearn.config import get_config
    from sdlearn.unet import UNet

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--convolution", default="direct", choices=layers.CONVOLUTIONS)
    parser.add_argument("--upsampling", default="copy", choices=layers.UPSAMPLINGS)
    parser.add_argument("--config", default="sd-v1", choices=("sd-v1", "test"))
    parser.add_argument("--latent", type=int, default=64, help="latent side (image side / 8)")
    args = parser.parse_args()
    layers.CONVOLUTION, layers.UPSAMPLING = args.convolution, args.upsampling
    config = get_config(args.config).unet
    if args.latent < 1 or args.latent % config.downsampling_factor:
        parser.error(f"--latent must be a positive multiple of {config.downsampling_factor} "
                     f"(the UNet of {args.config} halves it that often), got {args.latent}")
    start, last = time.perf_counter(), rss_gb()
    print(f"UNet of {args.config}, latent {args.latent}x{args.latent}, batch 2, convolution "
          f"{args.convolution}, upsampling {args.upsampling}")
    print(f"{'stage':<28} {'s':>6} {'RSS GB':>7} {'added':>7} {'HLO MB':>7}")

    def stage(name, hlo=None):
        nonlocal last
        now = rss_gb()
        size = f"{len(hlo) / 1e6:7.1f}" if hlo is not None else ""
        print(f"{name:<28} {time.perf_counter() - start:6.1f} {now:7.2f} {now - last:+7.2f} "
              f"{size:>7}", flush=True)
        last = now

    stage("Python, TensorFlow, Keras")
    unet = UNet(config)
    stage("UNet built (its weights)")
    rng = np.random.default_rng(0)
    inputs = (tf.constant(rng.standard_normal((2, args.latent, args.latent,
                                               config.latent_channels)), tf.float32),
              tf.constant([500, 500], tf.int32),
              tf.constant(rng.standard_normal((2, 77, config.context_dim)), tf.float32))
    call = tf.function(lambda x, t, c: unet([x, t, c]), jit_compile=True)
    call.get_concrete_function(*inputs)
    stage("traced (TensorFlow graph)")
    ir = call.experimental_get_compiler_ir(*inputs)
    stage("converted to HLO", ir(stage="hlo"))
    stage("HLO optimised", ir(stage="optimized_hlo"))
    call(*inputs).numpy()
    stage("first call (compile, run)")
    call(*inputs).numpy()
    stage("second call")


if __name__ == "__main__":
    main()
