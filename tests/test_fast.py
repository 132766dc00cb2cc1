"""The fast paths (sdlearn/fast.py) compute what the plain float32 path computes.

"Exactly" in float32 means to float32 rounding: XLA fuses and reorders sums, and a GEMM
blocks a batch of 2 differently from a batch of 1, so the last bits may differ (about 1e-6
of the values here). Half precision is checked against a stated tolerance. All on the toy
TEST configuration with random weights: milliseconds per call.
"""

import keras
import numpy as np
import pytest
from keras import ops

from sdlearn import fast, layers, sampler
from sdlearn.config import TEST, get_config
from sdlearn.pipeline import StableDiffusion
from sdlearn.text_encoder import TextEncoder
from sdlearn.unet import UNet
from sdlearn.vae import Decoder

FLOAT32 = dict(rtol=0, atol=2e-5)  # float32 rounding, on outputs of size ~1
# Guidance eps_u + s (eps_c - eps_u) multiplies the UNet's rounding by up to 2s + 1 = 16.
GUIDED = dict(rtol=0, atol=16 * 2e-5)
# Half precision: max |difference| over the output's standard deviation. bfloat16 keeps 8 bits
# of mantissa (relative rounding 2^-9 = 0.002 per op); errors add up over the layers.
HALF_TOLERANCE = {"mixed_bfloat16": 0.1, "mixed_float16": 0.02}


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(0)
    return UNet(TEST.unet)


def unet_inputs(batch=2, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, size, size, 4)).astype("float32"),
            np.array([999.0, 500.0][:batch] + [1.0] * (batch - 2), "float32"),
            rng.standard_normal((batch, 77, TEST.unet.context_dim)).astype("float32")]


@pytest.fixture
def small_blocks(monkeypatch):
    """Block the toy models' 64-pixel attention too (SD's thresholds only block >= 512 x 512),
    and count the blocked calls."""
    monkeypatch.setattr(layers, "BLOCKED_ABOVE", 64)
    monkeypatch.setattr(layers, "BLOCK_SCORES", 256)
    calls = []
    blocked = layers.blocked_attention
    monkeypatch.setattr(layers, "blocked_attention",
                        lambda q, k, v, rows: calls.append(rows) or blocked(q, k, v, rows))
    return calls


@pytest.mark.parametrize("kernel", ["blocked", "fused"])
@pytest.mark.parametrize("causal, heads, tq, tk", [(False, 4, 64, 77), (True, 4, 77, 77),
                                                   (False, 1, 64, 64), (False, 2, 12, 20)])
def test_attention_kernels_equal_the_einsums(small_blocks, kernel, causal, heads, tq, tk):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, tq, heads, 8)).astype("float32")
    k, v = (rng.standard_normal((2, tk, heads, 8)).astype("float32") for _ in range(2))
    plain = layers.attention(q, k, v, causal=causal, kernel="einsum")
    got = layers.attention(q, k, v, causal=causal, kernel=kernel)
    np.testing.assert_allclose(got, plain, rtol=0, atol=1e-6)
    # Blocks of at most BLOCK_SCORES = 256 scores: 64 queries x 77 keys in blocks of 2 rows.
    expected = [] if kernel == "fused" or causal else [{77: 2, 64: 4, 20: 12}[tk]]
    assert small_blocks == expected


def test_blocked_attention_has_the_same_gradients(small_blocks):
    """Training through the blocked loop (TensorFlow's while loop) learns what the einsums do."""
    import tensorflow as tf  # the test backend; model code itself never imports it

    rng = np.random.default_rng(4)
    q, k, v = (tf.Variable(rng.standard_normal((2, 64, 2, 8)).astype("float32"))
               for _ in range(3))
    target = rng.standard_normal((2, 64, 2, 8)).astype("float32")
    grads = {}
    for kernel in ("einsum", "blocked"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((layers.attention(q, k, v, kernel=kernel) - target) ** 2)
        grads[kernel] = [g.numpy() for g in tape.gradient(loss, [q, k, v])]
    for name, got, want in zip("qkv", grads["blocked"], grads["einsum"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=name)
    assert small_blocks == [4]


@pytest.mark.parametrize("tq, tk, rows", [
    (4096, 4096, 256),  # SD's 64x64 level: 256 x 4096 scores = 2**20 per block
    (4096, 77, 4096),   # cross-attention: one head at a time, all queries
    (512, 512, 512), (1000, 4096, 250),  # the largest divisor of Tq under the block size
    (8, 2 ** 21, 1),    # more keys than a block holds: one query at a time
    (256, 256, None), (64, 77, None),  # small enough whole (the tiny model)
    (None, 77, None)])  # length unknown when traced
def test_query_block(tq, tk, rows):
    assert layers.query_block(tq, tk) == rows


def test_unknown_attention_kernel_is_named():
    q = np.zeros((1, 4, 1, 8), "float32")
    with pytest.raises(ValueError, match=r"one of \('einsum', 'blocked', 'fused'\), got 'flash'"):
        layers.attention(q, q, q, kernel="flash")


def three_model_calls(unet):
    """{name: eager call} of the toy text encoder, UNet (the fixture) and decoder, on fixed
    inputs: eager calls read the module's switches each time."""
    keras.utils.set_random_seed(1)
    text_encoder, decoder = TextEncoder(TEST.text_encoder), Decoder(TEST.vae)
    tokens = np.random.default_rng(2).integers(0, 49408, (2, 77)).astype("int32")
    latent = np.random.default_rng(3).standard_normal((1, 8, 8, 4)).astype("float32")
    return {"text": lambda: text_encoder(tokens), "unet": lambda: unet(unet_inputs()),
            "decoder": lambda: decoder(latent)}


@pytest.mark.parametrize("kernel", ["blocked", "fused"])
def test_attention_switch_in_all_three_models(unet, small_blocks, monkeypatch, kernel):
    monkeypatch.setattr(layers, "BLOCK_SCORES", 2048)  # 2-4 blocks per head: eager loops are slow
    calls = three_model_calls(unet)
    monkeypatch.setattr(layers, "ATTENTION", "einsum")  # eager calls read the switch each time
    plain = {name: ops.convert_to_numpy(f()) for name, f in calls.items()}
    assert small_blocks == []
    monkeypatch.setattr(layers, "ATTENTION", kernel)
    for name, f in calls.items():
        np.testing.assert_allclose(ops.convert_to_numpy(f()), plain[name], **FLOAT32,
                                   err_msg=name)
    assert bool(small_blocks) == (kernel == "blocked")  # the UNet's and the decoder's


def test_xla_with_blocked_attention_equals_eager_einsums(unet, small_blocks, monkeypatch):
    monkeypatch.setattr(layers, "BLOCK_SCORES", 2048)
    monkeypatch.setattr(layers, "ATTENTION", "einsum")
    inputs = unet_inputs()
    eager = ops.convert_to_numpy(unet(inputs))
    monkeypatch.setattr(layers, "ATTENTION", "blocked")  # read when XLA traces the model
    unet.compile(jit_compile=True)  # the loop over blocks becomes an XLA while loop
    np.testing.assert_allclose(unet.predict_on_batch(inputs), eager, **FLOAT32)
    assert small_blocks


def record_calls(monkeypatch, name):
    """The (H, W, C_in, C_out) of each call of ``sdlearn.layers.<name>(x, kernel)`` from now."""
    calls, function = [], getattr(layers, name)
    monkeypatch.setattr(layers, name, lambda x, kernel: calls.append(
        tuple(x.shape[1:]) + (kernel.shape[-1],)) or function(x, kernel))
    return calls


@pytest.fixture
def winograd_calls(monkeypatch):
    return record_calls(monkeypatch, "winograd_conv")


def image_and_kernel(shape, c_out, seed):
    """A random image (shape) and 3x3 kernel to c_out channels: outputs of size ~1, as in the
    models."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((3, 3, shape[-1], c_out)) / np.sqrt(9 * shape[-1])
    return rng.standard_normal(shape).astype("float32"), kernel.astype("float32")


def half_precision_error(make_layer, monkeypatch, switch, value, policy):
    """max |layer in ``policy`` with the switch on - the float32 layer, switch off|, over the
    latter's standard deviation; and the half layer's output dtype."""
    x = np.random.default_rng(7).standard_normal((2, 8, 8, 16)).astype("float32")
    keras.utils.set_random_seed(7)
    plain = make_layer()
    reference = ops.convert_to_numpy(plain(x))
    with fast.dtype_policy(policy):
        half = make_layer()
    half.build(x.shape)
    half.set_weights(plain.get_weights())
    monkeypatch.setattr(layers, switch, value)
    got = half(x)
    error = np.abs(ops.convert_to_numpy(ops.cast(got, "float32")) - reference).max()
    return error / reference.std(), keras.backend.standardize_dtype(got.dtype)


@pytest.mark.parametrize("shape, c_out", [((2, 4, 4, 8), 5), ((1, 6, 10, 3), 4),
                                          ((3, 16, 16, 64), 64), ((1, 2, 2, 1), 1)])
def test_winograd_convolution_equals_the_direct_one(shape, c_out):
    x, kernel = image_and_kernel(shape, c_out, seed=5)
    direct = ops.convert_to_numpy(ops.conv(x, kernel, padding="same"))
    got = ops.convert_to_numpy(layers.winograd_conv(x, kernel))
    assert got.shape == direct.shape
    np.testing.assert_allclose(got, direct, **FLOAT32)


@pytest.mark.parametrize("matrix", [layers.WINOGRAD_BT, layers.WINOGRAD_G, layers.WINOGRAD_AT])
def test_combine_is_the_matrix_product(matrix):
    parts = np.random.default_rng(9).standard_normal((len(matrix[0]), 3, 5)).astype("float32")
    got = [ops.convert_to_numpy(t) for t in layers.combine(matrix, list(parts))]
    np.testing.assert_allclose(got, np.einsum("ai,ijk->ajk", np.array(matrix), parts), **FLOAT32)


def test_combine_names_a_row_it_cannot_take():
    with pytest.raises(ValueError, match=r"nonzero entries are \+-s, got \(1, -0.5, 0\)"):
        layers.combine([(1, -0.5, 0)], [np.ones(2, "float32")] * 3)


def test_unknown_convolution_is_named(monkeypatch):
    monkeypatch.setattr(layers, "CONVOLUTION", "fft")
    with pytest.raises(ValueError, match=r"one of \('direct', 'winograd'\), got 'fft'"):
        layers.conv(4)(np.zeros((1, 8, 8, 2), "float32"))


@pytest.mark.parametrize("shape, filters, kernel_size, used", [
    ((1, 8, 10, 3), 2, 3, True), ((2, 2, 2, 3), 4, 3, True),
    ((1, 5, 8, 3), 2, 3, False),  # F(2x2, 3x3) fills 2x2 blocks: an odd side stays direct
    ((1, 8, 8, 3), 2, 1, False),  # a 1x1 kernel: nothing to save
    ((1, 8, 8, 3), 5, 3, False),  # wider than WINOGRAD_MAX_WIDTH (4 here)
    ((2, 8, 12, 3), 2, 3, True),  # one image's tiles: 4 x 8 x 12 x 3 = WINOGRAD_MAX_TILES here
    ((1, 8, 14, 3), 2, 3, False)])  # 4 x 8 x 14 x 3 tiles: more than WINOGRAD_MAX_TILES
def test_winograd_only_where_it_applies(winograd_calls, monkeypatch, shape, filters,
                                        kernel_size, used):
    monkeypatch.setattr(layers, "WINOGRAD_MAX_WIDTH", 4)
    monkeypatch.setattr(layers, "WINOGRAD_MAX_TILES", 4 * 8 * 12 * 3)
    x = np.random.default_rng(6).standard_normal(shape).astype("float32")
    layer = layers.conv(filters, kernel_size)
    direct = ops.convert_to_numpy(layer(x))  # "direct", the default
    monkeypatch.setattr(layers, "CONVOLUTION", "winograd")
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), direct, **FLOAT32)
    assert winograd_calls == ([shape[1:] + (filters,)] if used else [])


def test_winograd_tile_limit_on_sds_decoder_at_512px(winograd_calls, monkeypatch):
    """SD's full-size decoder, traced symbolically (no arithmetic): at 512 px only its 64x64
    level fits WINOGRAD_MAX_TILES; from 128x128 on (512 channels) it stays direct."""
    monkeypatch.setattr(layers, "CONVOLUTION", "winograd")
    decoder = Decoder(get_config("sd-v1").vae)
    assert decoder(keras.Input((64, 64, 4), batch_size=1)).shape == (1, 512, 512, 3)
    assert {call[:2] for call in winograd_calls} == {(64, 64)}
    assert {call[2] for call in winograd_calls} == {512}


@pytest.mark.parametrize("policy", sorted(HALF_TOLERANCE))
def test_winograd_in_half_precision(winograd_calls, monkeypatch, policy):
    error, dtype = half_precision_error(lambda: layers.conv(16, 3), monkeypatch, "CONVOLUTION",
                                        "winograd", policy)
    assert dtype == policy.split("_")[1] and winograd_calls
    assert error < HALF_TOLERANCE[policy]


@pytest.fixture
def folded_calls(monkeypatch):
    return record_calls(monkeypatch, "folded_upsample_conv")


@pytest.mark.parametrize("shape, c_out", [((2, 4, 4, 8), 5), ((1, 5, 7, 3), 4),
                                          ((1, 16, 16, 64), 64), ((1, 1, 1, 2), 3)])
def test_folded_upsampling_equals_copy_then_convolution(shape, c_out):
    x, kernel = image_and_kernel(shape, c_out, seed=8)
    copied = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C_in)
    plain = ops.convert_to_numpy(ops.conv(copied, kernel, padding="same"))
    got = ops.convert_to_numpy(layers.folded_upsample_conv(x, kernel))
    assert got.shape == plain.shape
    np.testing.assert_allclose(got, plain, **FLOAT32)


def test_unknown_upsampling_is_named(monkeypatch):
    monkeypatch.setattr(layers, "UPSAMPLING", "bilinear")
    with pytest.raises(ValueError, match=r"one of \('copy', 'folded'\), got 'bilinear'"):
        layers.upsample(4)(np.zeros((1, 4, 4, 2), "float32"))


@pytest.mark.parametrize("policy", sorted(HALF_TOLERANCE))
def test_folded_upsampling_in_half_precision(folded_calls, monkeypatch, policy):
    error, dtype = half_precision_error(lambda: layers.upsample(16), monkeypatch, "UPSAMPLING",
                                        "folded", policy)
    assert dtype == policy.split("_")[1] and folded_calls
    assert error < HALF_TOLERANCE[policy]


CPU_FAST_PATHS = pytest.mark.parametrize("switch, value, function, sides", [
    # The UNet's levels 8, 4 and 2 (toy sizes); the decoder's 8 to 64.
    ("CONVOLUTION", "winograd", "winograd_conv", {2, 4, 8, 16, 32, 64}),
    # The UNet's upsamplings 2 -> 4 and 4 -> 8; the decoder's 8 -> 16 -> 32 -> 64.
    ("UPSAMPLING", "folded", "folded_upsample_conv", {2, 4, 8, 16, 32})])


@CPU_FAST_PATHS
def test_cpu_fast_path_in_all_three_models(unet, monkeypatch, switch, value, function, sides):
    traced = record_calls(monkeypatch, function)
    calls = three_model_calls(unet)
    plain = {name: ops.convert_to_numpy(f()) for name, f in calls.items()}
    assert traced == []  # off by default
    monkeypatch.setattr(layers, switch, value)
    for name, f in calls.items():
        np.testing.assert_allclose(ops.convert_to_numpy(f()), plain[name], **FLOAT32,
                                   err_msg=name)
    assert {call[0] for call in traced} == sides


@CPU_FAST_PATHS
def test_xla_with_cpu_fast_path_equals_eager_default(unet, monkeypatch, switch, value, function,
                                                     sides):
    traced = record_calls(monkeypatch, function)
    inputs = unet_inputs()
    eager = ops.convert_to_numpy(unet(inputs))
    monkeypatch.setattr(layers, switch, value)  # read when XLA traces the model
    unet.compile(jit_compile=True)
    np.testing.assert_allclose(unet.predict_on_batch(inputs), eager, **FLOAT32)
    assert {call[0] for call in traced} <= sides and traced


def test_two_guidance_calls_equal_one_batched_call(unet):
    x, _, context = unet_inputs()
    unconditional = np.zeros_like(context)
    calls = []

    def counting_unet(inputs):
        calls.append(len(inputs[0]))
        return unet(inputs)

    one = sampler.guided_noise(counting_unet, x, 500, context, unconditional, 7.5)
    two = sampler.guided_noise(fast.guidance_in_two_calls(counting_unet), x, 500, context,
                               unconditional, 7.5)
    assert calls == [4, 2, 2]
    np.testing.assert_allclose(two, one, **GUIDED)


def test_compiled_loop_equals_the_python_loop(unet):
    x, _, context = unet_inputs()
    unconditional = np.zeros_like(context)
    python_loop = sampler.sample(unet, x, context, unconditional, 3, 7.5, start_step=1)
    loops = {}
    compiled = fast.sample(unet, x, context, unconditional, 3, 7.5, start_step=1, loops=loops)
    np.testing.assert_allclose(compiled, python_loop, **GUIDED)
    assert list(loops) == [(3, 7.5, 1)]  # kept for the next call with the same settings


@pytest.mark.parametrize("policy", sorted(HALF_TOLERANCE))
def test_half_precision_within_tolerance(unet, policy):
    with fast.dtype_policy(policy):
        half = UNet(TEST.unet)
    assert keras.config.dtype_policy().name == "float32"  # restored after the build
    assert half.layers[-1].compute_dtype == policy.split("_")[1]
    assert half.layers[-1].kernel.dtype == "float32"  # weights stay float32: same .h5 files
    half.set_weights(unet.get_weights())
    inputs = unet_inputs()
    reference = ops.convert_to_numpy(unet(inputs))
    got = ops.convert_to_numpy(ops.cast(half(inputs), "float32"))
    error = np.abs(got - reference).max() / reference.std()
    print(f"{policy}: max |error| = {error:.3g} of the output's standard deviation")
    assert error < HALF_TOLERANCE[policy]


@pytest.fixture(scope="module")
def sd():  # the reference: plain float32, no XLA (eager), Python loop, one call of 2B
    return StableDiffusion("test", weights=None, jit_compile=False)


def same_weights(fast_sd, sd):
    for name in ("text_encoder", "unet", "decoder"):
        getattr(fast_sd, name).set_weights(getattr(sd, name).get_weights())
    return fast_sd


@pytest.mark.parametrize("switch", [{"compiled_loop": True}, {"batched_guidance": False}])
def test_pipeline_switches_give_the_same_images(sd, switch):
    fast_sd = same_weights(StableDiffusion("test", weights=None, jit_compile=False, **switch), sd)
    arguments = dict(prompt="a red circle", batch_size=2, num_steps=3, seed=0)
    difference = np.abs(fast_sd.text_to_image(**arguments).astype(int)
                        - sd.text_to_image(**arguments))
    assert difference.max() <= 1  # float32 rounding can move a pixel across a level


def test_pipeline_in_half_precision(sd):
    half = StableDiffusion("test", weights=None, jit_compile=False, dtype_policy="mixed_bfloat16")
    images = same_weights(half, sd).text_to_image("a red circle", num_steps=2, seed=0)
    assert images.dtype == np.uint8 and images.shape == (1, 64, 64, 3)
    assert half.unet.layers[-1].compute_dtype == "bfloat16"


def test_compiled_loop_has_no_callback(sd, monkeypatch):
    monkeypatch.setattr(sd, "compiled_loop", True)
    with pytest.raises(ValueError, match="no callback"):
        sd.text_to_image("x", num_steps=2, seed=0, callback=lambda *a: None)


def benchmark_script(name, monkeypatch):
    """benchmarks/<name>.py as a module, importable siblings included (they import each other)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module(name)


def test_benchmark_table_states_ratios_to_the_matmul_rate(monkeypatch):
    """benchmarks/benchmark.py's table (its measurements take minutes; its arithmetic not)."""
    from types import SimpleNamespace

    benchmark = benchmark_script("benchmark", monkeypatch)
    args = SimpleNamespace(implementations=["sdlearn", "kerascv"], config="sd-v1",
                           step_size=256, size=512, steps=20, batch=1, peak_tflops=None)
    measured = {"framework": "Keras", "step_s": 3.0, "step_s_matmul": 150e9,
                "step_s_matmul_range": [140e9, 160e9]}
    table, notes = benchmark.rows({("sdlearn", "step"): measured,
                                   ("kerascv", "step"): {"skipped": "not installed (keras_cv)"}},
                                  args)
    # 2 UNet passes of 0.180 TFLOP in 3 s: 120 GFLOP/s, 80% of 150.
    assert "| sdlearn | Keras | 140-160 | 3.00 | 120.0 (80%) |" in table[2]
    assert len(table) == 3 and notes == ["- kerascv: skipped, not installed (keras_cv)"]
    # The toy configuration's FLOPs are not counted: no share of the matmul rate is claimed.
    args.config = "test"
    table, _ = benchmark.rows({("sdlearn", "step"): measured}, args)
    assert "| sdlearn | Keras | 140-160 | 3.00 |  |" in table[2]


def test_benchmark_table_gives_a_gpu_batch_its_digits(monkeypatch):
    """On a GPU a batch of 3 images takes under a second and the target is a time per batch: the
    table prints times under a second to three significant digits, the batch's time, no "nan"."""
    from types import SimpleNamespace

    benchmark = benchmark_script("benchmark", monkeypatch)
    assert [benchmark.seconds(s) for s in (181.04, 1.826, 0.2934, 0.0339)] == [
        "181.0", "1.8", "0.293", "0.0339"]
    assert benchmark.seconds(1.826, 2) == "1.83" and benchmark.seconds(0.5, 2) == "0.500"
    args = SimpleNamespace(implementations=["sdlearn-fast"], config="sd-v1", step_size=256,
                           size=512, steps=50, batch=3, peak_tflops=989)
    generated = {"framework": "Keras", "image_s": 0.2934, "decode_s": 0.0151,
                 "image_s_matmul": 5e14, "decode_s_matmul": 5e14, "peak_rss_gb": 9.0,
                 "peak_device_gb": 21.37}
    table, _ = benchmark.rows({("sdlearn-fast", "generate"): generated}, args)
    assert table[0].endswith("| peak RSS GB | s per batch of 3 | image TFLOP/s (% of 989) | "
                             "peak device GB |")
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert cells[5:7] == ["0.293", "0.0151"] and cells[9] == "0.880" and cells[11] == "21.4"
    tflops = benchmark.task_flop(args)[2] / 0.2934 / 1e12  # one image's FLOPs over its time
    assert cells[10] == f"{tflops:.1f} ({100 * tflops / 989:.1f}%)"
    args.config = "test"  # FLOPs not counted: an empty cell, not "nan (nan%)"
    table, _ = benchmark.rows({("sdlearn-fast", "generate"): generated}, args)
    assert [cell.strip() for cell in table[2].strip("|").split("|")][10] == ""


def test_benchmark_records_the_xla_flags_it_ran_with(monkeypatch, tmp_path, capsys):
    """XLA_FLAGS changes what XLA compiles (RESULTS.md measures one), so a run's printed command
    and its JSON carry them: the command reproduces the run. (The worker of an unknown
    implementation fails at once, so no model is built here.)"""
    import json
    import sys

    benchmark = benchmark_script("benchmark", monkeypatch)
    result = tmp_path / "run.json"
    command = ["--implementations", "nothing", "--tasks", "step", "--json", str(result)]
    monkeypatch.setattr(sys, "argv", ["benchmark.py"] + command)
    monkeypatch.setenv("XLA_FLAGS", "--xla_a=1 --xla_b=2")
    benchmark.main()
    printed = capsys.readouterr().out
    assert ("Command: XLA_FLAGS='--xla_a=1 --xla_b=2' python benchmarks/benchmark.py "
            + " ".join(command)) in printed
    assert json.loads(result.read_text())["xla_flags"] == "--xla_a=1 --xla_b=2"
    monkeypatch.delenv("XLA_FLAGS")
    benchmark.main()
    assert "Command: python benchmarks/benchmark.py " in capsys.readouterr().out
    assert json.loads(result.read_text())["xla_flags"] == ""


def test_matmul_paths_table_shares_against_each_path(monkeypatch):
    """benchmarks/matmul_paths.py's table: XLA's best matmul rate against each path's best."""
    matmul_paths = benchmark_script("matmul_paths", monkeypatch)
    rates = {"eager": [200e9, 240e9], matmul_paths.XLA: [150e9, 180e9], "no oneDNN": [170e9]}
    table = matmul_paths.table(rates)
    assert table[2:] == ["| eager | 200-240 | 75% |", f"| {matmul_paths.XLA} | 150-180 | 100% |",
                         "| no oneDNN | 170-170 | 106% |"]


def test_readme_performance_table_is_the_measured_one():
    """README's side-by-side table repeats benchmarks/RESULTS.md's; a rerun must update both."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = (root / "benchmarks" / "RESULTS.md").read_text()
    section = results.split("### Side by side")[1].split("\n### ")[0]
    measured = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] in ("sdlearn", "kerascv", "diffusers"):
            share = lambda cell: re.search(r"\((\d+)%\)", cell).group(1)  # noqa: E731
            measured[cells[0]] = [cells[3], share(cells[4]), cells[5], cells[6],
                                  share(cells[7]), cells[8]]
    readme = (root / "README.md").read_text().split("## Performance")[1].split("\n## ")[0]
    shown = {}
    first_table = readme.split("| implementation")[1].split("\n\n")[0]
    for line in first_table.splitlines()[1:]:
        if line.startswith("| "):
            name = line.split("|")[1].split()[0].lower()
            shown[name] = re.findall(r"(\d+(?:\.\d+)?)(?: s| GB|%)", line)
    assert set(measured) == {"sdlearn", "kerascv", "diffusers"}
    assert shown == measured


def test_readme_runs_table_is_what_runs_py_prints(monkeypatch):
    """README's table of every recorded run is benchmarks/runs.py's, from the committed JSONs."""
    from pathlib import Path

    runs = benchmark_script("runs", monkeypatch)
    expected = runs.table(sorted(runs.HERE.glob("cpu*.json")))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index(expected[0])
    assert readme[start:].split("\n\n")[0].splitlines() == expected


def test_benchmark_times_no_compiling_of_the_loop(monkeypatch):
    """benchmark.py times a generation after a warm-up one. A compiled loop is one program per
    number of steps, so the warm-up must build the loop the timed generation runs; otherwise
    the GPU recipe's sdlearn-fast would time XLA compiling its 50-step loop."""
    from types import SimpleNamespace

    benchmark = benchmark_script("benchmark", monkeypatch)
    timing, built_while_timing = [], []
    real_timed, real_init = benchmark.timed, fast.CompiledDDIM.__init__

    def timed(result, key, *rest):
        timing.append(key)
        real_timed(result, key, *rest)
        timing.pop()

    def init(self, *args, **kwargs):
        built_while_timing.extend(timing)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(benchmark, "timed", timed)
    monkeypatch.setattr(fast.CompiledDDIM, "__init__", init)
    args = SimpleNamespace(config="test", task="generate", size=64, steps=3, batch=1,
                           decode_repeats=1)
    result = benchmark.run_sdlearn(args, "sdlearn-loop")
    assert result["image_s"] > 0 and result["warmup_steps"] == 3
    assert built_while_timing == []


def test_benchmark_reads_a_gpus_peak_memory_from_jax(monkeypatch):
    """On the GPU machine sdlearn's row gets the device's peak memory, as diffusers' gets
    PyTorch's; a CPU device keeps no statistics, so there is none to report."""
    import jax

    benchmark = benchmark_script("benchmark", monkeypatch)
    assert jax.local_devices()[0].platform == "cpu" and benchmark.jax_peak_device_gb() is None

    class GPU:
        def memory_stats(self):  # what JAX's CUDA devices report, among other counters
            return {"bytes_in_use": 1_000_000_000, "peak_bytes_in_use": 4_500_000_000}

    monkeypatch.setattr(jax, "local_devices", lambda: [GPU()])
    assert benchmark.jax_peak_device_gb() == 4.5


def test_results_md_tables_are_the_recorded_runs(monkeypatch):
    """Each committed run's table in benchmarks/RESULTS.md is what benchmark.py prints from that
    run's JSON, row for row: the tables are the measurements, not typed in by hand."""
    runs = benchmark_script("runs", monkeypatch)
    benchmark = benchmark_script("benchmark", monkeypatch)
    results_md = (runs.HERE / "RESULTS.md").read_text()
    paths = sorted(runs.HERE.glob("*.json"))  # cpu*.json, and runs with other XLA settings
    assert len(paths) >= 10  # the runs recorded so far
    for path in paths:
        args, results, _ = runs.load(path)
        table, _ = benchmark.rows(results, args)
        assert "\n".join(table[2:]) in results_md, f"{path.name}'s rows are not in RESULTS.md"


def test_runs_py_checks_each_target_on_what_was_measured(monkeypatch):
    """runs.py's verdicts: a target counts only where its run measured it, and a share is of
    the matmul rate around that very call."""
    runs = benchmark_script("runs", monkeypatch)
    step = {"sdlearn": 0.848, "kerascv": 0.81}
    assert runs.targets(step, {}, {}, {}) == {"step >= 85%": False}
    met = runs.targets({"sdlearn": 0.9}, {"sdlearn": 0.76},
                       {"sdlearn": 240.0, "kerascv": 270.0, "diffusers": 239.0},
                       {"sdlearn": 6.5, "kerascv": 7.0})
    assert met == {"step >= 85%": True, "decode >= 75%": True, "image <= KerasCV": True,
                   "image <= diffusers": False, "memory <= KerasCV": True}
    args = runs.SimpleNamespace(config="sd-v1", step_size=256, size=512, steps=20, batch=1)
    results = {("sdlearn", "step"): {"step_s": 3.0, "step_s_matmul": 150e9}}
    # 2 UNet passes of 0.180 TFLOP in 3 s: 120 GFLOP/s, 80% of 150.
    assert runs.shares(args, results, "step", "step_s", 0) == {"sdlearn": 0.8}


def test_runs_py_checks_sdlearn_winograd_in_a_row_of_its_own(monkeypatch, tmp_path):
    import json

    runs = benchmark_script("runs", monkeypatch)
    step = {"step_s": 3.0, "step_s_matmul": 150e9}  # 80% of the matmul rate (see above)
    run = {"args": {"config": "sd-v1", "step_size": 256, "size": 512, "steps": 20, "batch": 1},
           "cpu": "a CPU", "results": {"sdlearn step": step, "kerascv step": step,
                                       "sdlearn-winograd step": dict(step, step_s=2.5)}}
    path = tmp_path / "cpu-test.json"
    path.write_text(json.dumps(run))
    rows = runs.table([path])[2:]
    assert len(rows) == 2
    assert rows[0].startswith("| cpu-test.json | a CPU |") and "| 80.0% / 80.0% / - |" in rows[0]
    assert rows[1].startswith("| cpu-test.json (sdlearn-winograd) |")
    assert "| 96.0% / 80.0% / - |" in rows[1] and rows[1].endswith("| 1 of 1 |")
    assert rows[0].endswith("| 0 of 1; missed: step >= 85% |")


def test_runs_py_refuses_the_json_of_a_run_cut_short(monkeypatch, tmp_path):
    runs = benchmark_script("runs", monkeypatch)
    cut_short = tmp_path / "cut.json"
    cut_short.write_text('{"results": {}}')  # what benchmark.py has written after one worker
    with pytest.raises(SystemExit, match="no args, cpu: not the JSON of a finished"):
        runs.load(cut_short)
    with pytest.raises(SystemExit, match="not a readable JSON file"):
        runs.load(tmp_path / "missing.json")


def run_compile_memory(*flags):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_memory.py"
    return subprocess.run([sys.executable, str(script), "--config", "test", *flags],
                          capture_output=True, text=True)


def test_compile_memory_prints_each_stage():
    """benchmarks/compile_memory.py on the toy UNet: every stage, in order, with its memory."""
    run = run_compile_memory("--latent", "8", "--convolution", "winograd")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "convolution winograd, upsampling copy" in lines[0]
    stages = [line[:28].strip() for line in lines[2:]]
    assert stages == ["Python, TensorFlow, Keras", "UNet built (its weights)",
                      "traced (TensorFlow graph)", "converted to HLO", "HLO optimised",
                      "first call (compile, run)", "second call"]
    numbers = [line[28:].split() for line in lines[2:]]
    assert all(float(row[1]) > 0 for row in numbers)  # resident GB after each stage
    assert [len(row) for row in numbers] == [3, 3, 3, 4, 4, 3, 3]  # HLO MB where there is HLO


def test_compile_memory_names_a_latent_the_unet_cannot_halve():
    run = run_compile_memory("--latent", "6")
    assert run.returncode == 2
    assert "--latent must be a positive multiple of 4 (the UNet of test halves it that often), " \
           "got 6" in run.stderr
