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
from sdlearn.config import TEST
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


@pytest.mark.parametrize("causal, heads, tq, tk", [(False, 4, 64, 77), (True, 4, 77, 77),
                                                   (False, 1, 64, 64)])
def test_fused_attention_equals_the_einsums(causal, heads, tq, tk):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, tq, heads, 8)).astype("float32")
    k, v = (rng.standard_normal((2, tk, heads, 8)).astype("float32") for _ in range(2))
    plain = layers.attention(q, k, v, causal=causal, fused=False)
    fused = layers.attention(q, k, v, causal=causal, fused=True)
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-6)


def test_fused_attention_switch_in_all_three_models(unet, monkeypatch):
    keras.utils.set_random_seed(1)
    text_encoder, decoder = TextEncoder(TEST.text_encoder), Decoder(TEST.vae)
    tokens = np.random.default_rng(2).integers(0, 49408, (2, 77)).astype("int32")
    latent = np.random.default_rng(3).standard_normal((1, 8, 8, 4)).astype("float32")
    calls = {"text": lambda: text_encoder(tokens), "unet": lambda: unet(unet_inputs()),
             "decoder": lambda: decoder(latent)}
    plain = {name: ops.convert_to_numpy(f()) for name, f in calls.items()}  # eager: reads the flag
    monkeypatch.setattr(layers, "FUSED_ATTENTION", True)
    for name, f in calls.items():
        np.testing.assert_allclose(ops.convert_to_numpy(f()), plain[name], **FLOAT32,
                                   err_msg=name)


def test_xla_equals_eager(unet):
    unet.compile(jit_compile=True)
    inputs = unet_inputs()
    np.testing.assert_allclose(unet.predict_on_batch(inputs), unet(inputs), **FLOAT32)


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


def test_benchmark_table_states_ratios_to_the_matmul_rate():
    """benchmarks/benchmark.py's table (its measurements take minutes; its arithmetic not)."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    args = SimpleNamespace(implementations=["sdlearn", "kerascv"], step_size=256, size=512,
                           steps=20, batch=1, peak_tflops=None)
    measured = {"framework": "Keras", "step_s": 3.0, "step_s_matmul": 150e9,
                "step_s_matmul_range": [140e9, 160e9]}
    table, notes = benchmark.rows({("sdlearn", "step"): measured,
                                   ("kerascv", "step"): {"skipped": "not installed (keras_cv)"}},
                                  args)
    # 2 UNet passes of 0.180 TFLOP in 3 s: 120 GFLOP/s, 80% of 150.
    assert "| sdlearn | Keras | 140-160 | 3.00 | 120.0 (80%) |" in table[2]
    assert len(table) == 3 and notes == ["- kerascv: skipped, not installed (keras_cv)"]
