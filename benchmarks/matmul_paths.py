"""Which matrix multiply is the ceiling: the one benchmark.py times, or the one XLA compiles?

    python benchmarks/matmul_paths.py [--rounds 5]   # about a minute on 2 cores

benchmark.py compares every model with the float32 (2048, 3072) x (3072, 3072) product as the
framework runs it op by op (``benchmark.keras_matmul``: ``keras.ops.matmul``, eager). The
models themselves run compiled by XLA, and XLA's CPU backend multiplies matrices with code of
its own (Eigen's). TensorFlow's eager op is Eigen's too, unless TensorFlow turned oneDNN on at
start-up, which it does on x86 CPUs with AVX-512 VNNI or newer (it prints "oneDNN custom
operations are on"): then the eager product is oneDNN's, and the ceiling the benchmark
measures is one that no XLA-compiled model reaches on its matrix multiplies.

This times the same product three ways, in interleaved rounds (TensorFlow backend): eager, as
benchmark.py does; compiled by XLA, as the models run it; and eager in a child process started
with ``TF_ENABLE_ONEDNN_OPTS=0`` (TensorFlow without oneDNN). It prints each one's range of
GFLOP/s and XLA's best as a share of each eager best.
"""

import argparse
import os
import subprocess
import sys

from benchmark import cpu_name, keras_matmul, matmul_operands, matmul_rate  # the sibling script

XLA = "XLA (what the models run)"


def xla_matmul():
    """``benchmark.keras_matmul``'s product, compiled by XLA as the models are."""
    import tensorflow as tf

    a, b = matmul_operands()
    product = tf.function(lambda a, b: tf.matmul(a, b)[0, 0], jit_compile=True)
    return lambda: product(a, b).numpy()


def rate_without_onednn():
    """benchmark.py's matmul rate (eager) in a child process whose TensorFlow starts with
    oneDNN off, in FLOP/s."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    out = subprocess.run([sys.executable, __file__, "--eager-only"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--eager-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if args.eager_only:  # the child: one rate, the last word on stdout
        return print(matmul_rate(keras_matmul()))
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("matmul_paths.py compares TensorFlow's eager and XLA products: "
                         f"run it with KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    import tensorflow as tf

    eager, compiled = keras_matmul(), xla_matmul()
    paths = {"eager (benchmark.py's ceiling)": lambda: matmul_rate(eager),
             XLA: lambda: matmul_rate(compiled),
             "eager, TF_ENABLE_ONEDNN_OPTS=0": rate_without_onednn}
    rates = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, rate in paths.items():
            rates[name].append(rate())
    print(f"float32 (2048, 3072) x (3072, 3072), best of 5 per round, {args.rounds} rounds; "
          f"TensorFlow {tf.__version__}; {cpu_name()}, {os.cpu_count()} cores\n")
    print("\n".join(table(rates)))


def table(rates):
    """Markdown rows: each path's range of GFLOP/s, and XLA's best as a share of its best.

    rates: {path: [FLOP/s, one per round]}, with the XLA path under the key ``XLA``."""
    xla = max(rates[XLA])
    lines = ["| path | GFLOP/s | XLA's best as % of this path's best |", "|---|---:|---:|"]
    for name, r in rates.items():
        lines.append(f"| {name} | {min(r) / 1e9:.0f}-{max(r) / 1e9:.0f} | "
                     f"{100 * xla / max(r):.0f}% |")
    return lines


if __name__ == "__main__":
    main()
