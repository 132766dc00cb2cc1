"""sdlearn's UNet against KerasCV's, interleaved in ONE process, with the same weights.

    python benchmarks/ab_unet.py [--size 256] [--rounds 3]

benchmark.py runs each implementation in its own process, one after the other; on a shared
machine the load changes between them, and a difference of 50% between two processes can be
the neighbours' doing. Here both UNets (KerasCV's with random weights, sdlearn's loaded from
the same .h5 file) and a float32 matmul take turns, round after round, so each round sees
the same load. Timed per round: one guided step's UNet work, as KerasCV does it (two calls of
batch 1), as sdlearn does it (one call of batch 2), and sdlearn with two calls of batch 1;
and nine (2048, 3072) x (3072, 3072) matmuls. TensorFlow backend, XLA for both models.
"""

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import ops
from keras.src.legacy.saving import legacy_h5_format
from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel

from benchmark import UNET_FLOP  # the sibling script
from sdlearn.config import SD_V1
from sdlearn.unet import UNet

MATMUL_FLOP = 9 * 2 * 2048 * 3072 * 3072


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    side = args.size // 8
    start = time.perf_counter()
    reference = DiffusionModel(args.size, args.size, 77, download_weights=False)
    reference.compile(jit_compile=True)
    ours = UNet(SD_V1.unet)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "unet.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, reference)
        ours.load_weights(path)
    ours.compile(jit_compile=True)
    print(f"built both UNets in {time.perf_counter() - start:.0f} s", flush=True)

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, side, side, 4)).astype("float32")
    context = rng.standard_normal((1, 77, 768)).astype("float32")
    t = np.array([500.0], "float32")
    embedding = rng.standard_normal((1, 320)).astype("float32")  # KerasCV takes it as input
    a, b = keras.random.normal((2048, 3072)), keras.random.normal((3072, 3072))
    calls = {
        "KerasCV, 2 calls of batch 1": lambda: [reference.predict_on_batch(
            {"latent": latent, "timestep_embedding": embedding, "context": context})
            for _ in range(2)],
        "sdlearn, 1 call of batch 2": lambda: ours.predict_on_batch(
            [np.concatenate([latent] * 2), np.concatenate([t] * 2),
             np.concatenate([context] * 2)]),
        "sdlearn, 2 calls of batch 1": lambda: [ours.predict_on_batch([latent, t, context])
                                                for _ in range(2)],
        "9 float32 matmuls": lambda: [ops.convert_to_numpy(ops.matmul(a, b)[0, 0])
                                      for _ in range(9)],
    }
    for call in calls.values():
        call()  # compiles
    times = {name: [] for name in calls}
    for round_ in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()),
              flush=True)
    matmul = MATMUL_FLOP / min(times["9 float32 matmuls"])
    print(f"\n| {args.size} px, best of {args.rounds} rounds | s | GFLOP/s | % of matmul |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        flop = MATMUL_FLOP if "matmul" in name else 2 * UNET_FLOP[side]
        rate = flop / min(values)
        print(f"| {name} | {min(values):.2f} | {rate / 1e9:.1f} | {100 * rate / matmul:.0f}% |")


if __name__ == "__main__":
    main()
