"""Tests for sdlearn/sampler.py: the schedule, DDIM and Euler sampling, classifier-free guidance.

No real UNet here. The noise predictors are analytic: in a "Gaussian world" where every latent
element is x_0 ~ N(mu, s^2), the best possible noise prediction (the posterior mean of eps) is
known in closed form, and so is where the probability-flow ODE takes every starting point:

    x_t = sqrt(a) x_0 + sqrt(1 - a) eps  ~  N(sqrt(a) mu, v),   v = a s^2 + 1 - a
    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / v
    ODE flow:  x_t = sqrt(a_T) mu + sqrt(v_T) z   ->   x_0 = mu + s z        (z ~ N(0, 1))

so a sampler fed eps* must land on mu + s z, up to its discretisation error.
"""

import numpy as np
import pytest
import keras
from keras import ops

from sdlearn import sampler
from sdlearn.sampler import (ALPHAS_CUMPROD, add_noise, alpha_at, alphas_cumprod, ddim_step,
                             ddim_timesteps, euler_step, guided_noise, img2img_start,
                             karras_timesteps, sample, sample_euler)

SAMPLERS = [sample, sample_euler]
D = 8  # a toy context width; the real one is 768


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


class GaussianWorld:
    """A fake UNet [latent, t, context] -> eps*: the exact noise predictor when x_0 ~ N(mu, s^2).

    mu is a number, or None to read it from the context: mu = mean of the context (per sample),
    which makes the prompt matter. Records the batch size of every call.
    """

    def __init__(self, mu=2.0, s=1.0):
        self.mu, self.s, self.batches = mu, s, []

    def __call__(self, inputs):
        x, t, context = inputs
        assert tuple(t.shape) == (x.shape[0],) and tuple(context.shape)[:2] == (x.shape[0], 77)
        self.batches.append(int(x.shape[0]))
        # The coefficients, per sample, in numpy (a fake may; the sampler itself may not).
        a = alpha_at(_np(t).astype(np.float64)).reshape(-1, 1, 1, 1)
        mu = self.mu if self.mu is not None else _np(context).mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
        scale = np.sqrt(1 - a) / (a * self.s**2 + 1 - a)
        return x * scale.astype("float32") - (scale * np.sqrt(a) * mu).astype("float32")


def _start(z, mu, s):
    """A draw of the exact marginal at t = 999 for the Gaussian world, from standard normal z."""
    a = ALPHAS_CUMPROD[999]
    return (np.sqrt(a) * mu + np.sqrt(a * s**2 + 1 - a) * z).astype("float32")


def _z(batch=4, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 32, 32, 1)).astype("float32")


def _contexts(batch=4):
    return np.ones((batch, 77, D), "float32"), np.zeros((batch, 77, D), "float32")


# --- The schedule -------------------------------------------------------------------------------

def test_alphas_cumprod_equals_keras_cv_table():
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    ours = alphas_cumprod()
    assert ours.dtype == np.float64 and ours.shape == (1000,)
    # KerasCV's table has 7 significant digits, rounded from a slightly different computation:
    # the largest difference is 5.24e-8 (t = 69), so "equal to 5e-8" holds to 6e-8.
    np.testing.assert_allclose(ours, np.array(_ALPHAS_CUMPROD), rtol=0, atol=6e-8)
    np.testing.assert_array_equal(ALPHAS_CUMPROD, ours)
    assert np.all(np.diff(ours) < 0)  # every step adds noise
    assert ours[0] == pytest.approx(1 - 0.00085) and ours[-1] == pytest.approx(0.0046601, abs=1e-7)


def test_alpha_at_interpolates_the_table():
    np.testing.assert_allclose(alpha_at(np.arange(1000)), ALPHAS_CUMPROD, rtol=1e-12)
    mid = alpha_at(np.array([500.5]))[0]
    assert ALPHAS_CUMPROD[501] < mid < ALPHAS_CUMPROD[500]


def test_ddim_timesteps_spacing():
    np.testing.assert_array_equal(ddim_timesteps(1), [0])  # as KerasCV: ratio falls back to T
    np.testing.assert_array_equal(ddim_timesteps(2), [999, 0])
    np.testing.assert_array_equal(ddim_timesteps(5), [999, 749, 500, 250, 0])  # 499.5 -> even
    ts = ddim_timesteps(50)
    assert ts.shape == (50,) and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    assert ts.dtype.kind == "i"


def test_karras_timesteps():
    ts = karras_timesteps(10)
    assert ts[0] == pytest.approx(999) and ts[-1] == pytest.approx(0, abs=1e-9)
    assert np.all(np.diff(ts) < 0)
    # rho = 7 puts more steps at low noise than DDIM's even spacing: half of them below t = 330.
    assert np.sum(ts < 330) >= 5 and np.sum(ddim_timesteps(10) < 330) == 3
    sigma = np.sqrt((1 - alpha_at(ts)) / alpha_at(ts))  # even in sigma^(1/7)
    np.testing.assert_allclose(np.diff(sigma ** (1 / 7)), np.diff(sigma ** (1 / 7))[0], rtol=1e-9)


class _KerasCVStub:
    """Stands in for KerasCV's DiffusionModel and Decoder, to run its real generate_image loop."""

    def __init__(self, eps_fn):
        self.eps_fn, self.timesteps, self.latent = eps_fn, [], None

    def predict_on_batch(self, inputs):
        if not isinstance(inputs, dict):  # the decoder: keep the final latent
            self.latent = _np(inputs)
            return np.zeros((inputs.shape[0], 8, 8, 3), "float32")
        t = inputs["timestep_embedding"][:, 0]  # our patched "embedding" is t itself
        return self.eps_fn([inputs["latent"], t, inputs["context"]])


def _keras_cv_generate(eps_fn, noise, context, unconditional_context, num_steps):
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion

    sd = StableDiffusion.__new__(StableDiffusion)  # no models built, no weights
    stub = _KerasCVStub(eps_fn)
    sd._diffusion_model = sd._decoder = stub

    def timestep_embedding(timestep, batch_size):
        stub.timesteps.append(int(timestep))
        return ops.full((batch_size, 1), float(timestep))

    sd._get_timestep_embedding = timestep_embedding
    sd._get_unconditional_context = lambda: unconditional_context
    sd.generate_image(context, batch_size=noise.shape[0], num_steps=num_steps,
                      diffusion_noise=noise)
    return stub.latent, stub.timesteps


@pytest.mark.parametrize("num_steps", [1, 2, 5, 50])
def test_ddim_timesteps_equal_keras_cv(num_steps):
    zero = lambda inputs: ops.zeros_like(inputs[0])  # noqa: E731
    noise = np.zeros((1, 8, 8, 4), "float32")
    _, visited = _keras_cv_generate(zero, noise, np.zeros((1, 77, D), "float32"),
                                    np.zeros((1, 77, D), "float32"), num_steps)
    assert visited == ddim_timesteps(num_steps).tolist()


def test_sample_equals_keras_cv_generate_image():
    # KerasCV's own DDIM loop (two UNet calls per step) against ours (one call of 2B), on a
    # nonlinear fake UNet that depends on latent, t and context.
    def eps_fn(inputs):
        x, t, c = inputs
        t = ops.reshape(ops.cast(t, "float32"), (-1, 1, 1, 1))
        return ops.tanh(x) * (1 + t / 1000) + ops.mean(c, axis=(1, 2), keepdims=True)[..., None]

    rng = np.random.default_rng(1)
    noise = rng.standard_normal((2, 8, 8, 4)).astype("float32")
    context = rng.standard_normal((2, 77, D)).astype("float32")
    unconditional = rng.standard_normal((1, 77, D)).astype("float32")
    theirs, _ = _keras_cv_generate(eps_fn, noise, context, unconditional, num_steps=5)
    ours = _np(sample(eps_fn, noise, context, unconditional, num_steps=5, guidance_scale=7.5))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert np.abs(ours - noise).max() > 0.1  # the comparison is not vacuous


# --- The steps ----------------------------------------------------------------------------------

def test_add_noise_is_the_forward_process():
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal((2, 2, 8, 8, 4)).astype("float32")
    a = ALPHAS_CUMPROD[[10, 900]]
    x_t = _np(add_noise(x0, eps, a))  # one level per sample
    for b in range(2):
        np.testing.assert_allclose(x_t[b], np.sqrt(a[b]) * x0[b] + np.sqrt(1 - a[b]) * eps[b],
                                   rtol=1e-5, atol=1e-6)
    one_level = _np(add_noise(x0, eps, a[1]))  # one level for the whole batch
    np.testing.assert_allclose(one_level, np.sqrt(a[1]) * x0 + np.sqrt(1 - a[1]) * eps,
                               rtol=1e-5, atol=1e-6)


def test_ddim_step_inverts_add_noise_and_reaches_x0():
    # With the true eps, pred_x0 is exactly x_0 and x_prev is exactly q's sample at alpha_prev.
    rng = np.random.default_rng(3)
    x0, eps = rng.standard_normal((2, 1, 4, 4, 4)).astype("float32")
    a_t, a_prev = ALPHAS_CUMPROD[700], ALPHAS_CUMPROD[300]
    x_prev, pred_x0 = ddim_step(add_noise(x0, eps, a_t), eps, a_t, a_prev)
    np.testing.assert_allclose(_np(pred_x0), x0, atol=1e-5)
    np.testing.assert_allclose(_np(x_prev), _np(add_noise(x0, eps, a_prev)), atol=1e-5)
    x_last, _ = ddim_step(add_noise(x0, eps, a_t), eps, a_t, 1.0)  # final step: alpha_prev = 1
    np.testing.assert_allclose(_np(x_last), x0, atol=1e-5)


def test_euler_step_is_ddim_step():
    # Karras et al.: DDIM (eta = 0) is Euler's method on dx_bar/dsigma = eps. Check it numerically,
    # and against an Euler step written out here in sigma, independently of the module.
    rng = np.random.default_rng(4)
    x_t, eps = rng.standard_normal((2, 2, 4, 4, 4)).astype("float32")
    for a_t, a_prev in [(ALPHAS_CUMPROD[999], ALPHAS_CUMPROD[979]), (ALPHAS_CUMPROD[20], 1.0),
                        (0.3, 0.7)]:
        ddim, ddim_x0 = map(_np, ddim_step(x_t, eps, a_t, a_prev))
        euler, euler_x0 = map(_np, euler_step(x_t, eps, a_t, a_prev))
        sigma, sigma_prev = np.sqrt((1 - a_t) / a_t), np.sqrt((1 - a_prev) / a_prev)
        by_hand = (x_t / np.sqrt(a_t) + (sigma_prev - sigma) * eps) * np.sqrt(a_prev)
        np.testing.assert_allclose(euler, ddim, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(euler, by_hand, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(euler_x0, ddim_x0, rtol=1e-4, atol=1e-4)


def test_one_step_compiles():
    # The per-step work is keras.ops only, so it traces and jit-compiles.
    backend = keras.backend.backend()
    if backend == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        jit = lambda f: tf.function(f, jit_compile=True)  # noqa: E731
    elif backend == "jax":
        jit = pytest.importorskip("jax").jit
    else:
        pytest.skip(f"no jit check for the {backend} backend")
    context, unconditional = _contexts(2)
    unet = lambda inputs: ops.tanh(inputs[0]) * ops.mean(inputs[2])  # noqa: E731

    def step(x_t):
        eps = guided_noise(unet, x_t, 500, context, unconditional, 7.5)
        return ddim_step(x_t, eps, ALPHAS_CUMPROD[500], ALPHAS_CUMPROD[480])

    x = _z(2)
    for eager, compiled in zip(step(x), jit(step)(x)):
        np.testing.assert_allclose(_np(compiled), _np(eager), rtol=1e-5, atol=1e-5)


# --- Sampling in the Gaussian world ---------------------------------------------------------------

@pytest.mark.parametrize("sampler_fn", SAMPLERS, ids=lambda f: f.__name__)
def test_sampler_is_exact_in_the_gaussian_world(sampler_fn):
    mu, s, z = 2.0, 1.0, _z()  # 4096 elements
    context, _ = _contexts()
    errors = {}
    for n in (25, 50):
        x0 = _np(sampler_fn(GaussianWorld(mu, s), _start(z, mu, s), context, None, num_steps=n,
                            guidance_scale=1.0))
        errors[n] = np.abs(x0 - (mu + s * z)).max()
        assert x0.mean() == pytest.approx(mu + s * z.mean(), abs=0.02)
        # Euler/DDIM shrink the spread a little: ~3% at 50 steps, ~6% at 25 (first order).
        assert x0.std() == pytest.approx(s * z.std(), rel=0.07)
    assert errors[50] < 0.15
    assert errors[50] < 0.6 * errors[25]  # first-order convergence to the exact flow


@pytest.mark.parametrize("sampler_fn", SAMPLERS, ids=lambda f: f.__name__)
def test_sampler_from_standard_normal_noise(sampler_fn):
    # The usual start, x_T ~ N(0, 1), is not quite the marginal at t = 999, N(sqrt(a_T) mu, v_T):
    # SD's schedule leaves sqrt(a_T) = 0.068 of the signal at T, so the sampler cannot undo a
    # mean offset (Lin et al. 2024, "Common diffusion noise schedules ... are flawed"). The exact
    # flow predicts where samples land: mu + s (z - sqrt(a_T) mu) / sqrt(v_T).
    mu, s, z = 2.0, 0.5, _z(seed=5)
    a = ALPHAS_CUMPROD[999]
    v = a * s**2 + 1 - a
    x0 = _np(sampler_fn(GaussianWorld(mu, s), z, _contexts()[0], None, num_steps=50,
                        guidance_scale=1.0))
    expected = mu + s * (z - np.sqrt(a) * mu) / np.sqrt(v)
    assert x0.mean() == pytest.approx(expected.mean(), abs=0.01)
    assert x0.mean() == pytest.approx(mu, abs=0.1)  # ... about mu,
    assert x0.std() == pytest.approx(expected.std(), rel=0.08)  # ~ s: 0.47-0.48 for s = 0.5
    assert np.abs(x0 - expected).max() < 0.12


@pytest.mark.parametrize("sampler_fn", SAMPLERS, ids=lambda f: f.__name__)
def test_guidance_in_the_gaussian_world(sampler_fn):
    # mu is read from the context: the prompt's context has mean 1 (sample 0) or -1 (sample 1), the
    # empty prompt's 0. eps* is affine in mu with a coefficient free of mu, so guidance
    # eps_u + g (eps_c - eps_u) is eps* with mu_u + g (mu_c - mu_u): samples land at mean g * mu_c.
    s, z = 1.0, _z(2)
    mu_c = np.array([1.0, -1.0]).reshape(2, 1, 1, 1)
    context = np.ones((2, 77, D), "float32") * mu_c[:, :, :, 0]
    unconditional = np.zeros((1, 77, D), "float32")  # batch 1: repeated to the batch
    for g in (1.0, 3.0):
        world = GaussianWorld(mu=None, s=s)
        x0 = _np(sampler_fn(world, _start(z, g * mu_c, s), context, unconditional, num_steps=50,
                            guidance_scale=g))
        expected_mean = g * mu_c.ravel() + s * z.mean((1, 2, 3))
        np.testing.assert_allclose(x0.mean(axis=(1, 2, 3)), expected_mean, atol=0.02)
        assert np.abs(x0 - (g * mu_c + s * z)).max() < 0.15
        assert world.batches == [2 if g == 1.0 else 4] * 50  # one call per step, B or 2B


# --- Guidance -----------------------------------------------------------------------------------

class _Recorder:
    """A nonlinear fake UNet that records its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, inputs):
        x, t, c = inputs
        self.calls.append([_np(v) for v in inputs])
        t = ops.reshape(t, (-1, 1, 1, 1))
        return ops.sin(x * (1 + t / 100)) + ops.mean(c * c, axis=(1, 2), keepdims=True)[..., None]


def test_guided_noise_is_one_batched_call():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 4, 4)).astype("float32")
    context, unconditional = rng.standard_normal((2, 3, 77, D)).astype("float32")
    unet = _Recorder()
    eps = _np(guided_noise(unet, x, 321, context, unconditional, 7.5))
    assert len(unet.calls) == 1
    latent, t, ctx = unet.calls[0]
    assert latent.shape == (6, 4, 4, 4) and t.shape == (6,) and t.dtype == np.float32
    np.testing.assert_array_equal(t, 321.0)
    np.testing.assert_array_equal(ctx[:3], unconditional)  # rows [unconditional; conditional]
    np.testing.assert_array_equal(ctx[3:], context)

    separate = _Recorder()
    eps_u = _np(separate([x, ops.full((3,), 321.0), unconditional]))
    eps_c = _np(separate([x, ops.full((3,), 321.0), context]))
    np.testing.assert_allclose(eps, eps_u + 7.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
    assert np.abs(eps - eps_c).max() > 0.1  # guidance changed something

    one = _Recorder()
    np.testing.assert_allclose(_np(guided_noise(one, x, 321, context, unconditional, 1.0)), eps_c,
                               rtol=1e-6)
    assert len(one.calls) == 1 and one.calls[0][0].shape[0] == 3  # scale 1: conditional only


def test_guided_noise_per_sample_timesteps():
    x = np.ones((2, 2, 2, 4), "float32")
    unet = _Recorder()
    context, unconditional = _contexts(2)
    guided_noise(unet, x, np.array([10.0, 20.0]), context, unconditional, 2.0)
    np.testing.assert_array_equal(unet.calls[0][1], [10, 20, 10, 20])


# --- The loop: callback, determinism, image-to-image --------------------------------------------

@pytest.mark.parametrize("sampler_fn", SAMPLERS, ids=lambda f: f.__name__)
def test_callback_and_determinism(sampler_fn):
    seen = []

    def callback(i, t, x_t, pred_x0):
        seen.append((i, t, tuple(x_t.shape), tuple(pred_x0.shape), _np(x_t), _np(pred_x0)))

    noise, (context, unconditional) = _z(2)[:, :8, :8], _contexts(2)
    out = _np(sampler_fn(_Recorder(), noise, context, unconditional, num_steps=7,
                         callback=callback))
    again = _np(sampler_fn(_Recorder(), noise, context, unconditional, num_steps=7))
    np.testing.assert_array_equal(out, again)  # deterministic
    assert [s[0] for s in seen] == list(range(7))
    expected_t = ddim_timesteps(7) if sampler_fn is sample else karras_timesteps(7)
    np.testing.assert_allclose([s[1] for s in seen], expected_t)
    assert all(s[2] == s[3] == (2, 8, 8, 1) for s in seen)
    np.testing.assert_array_equal(seen[0][4], noise)  # x_t is the latent the step started from
    np.testing.assert_allclose(seen[-1][5], out, atol=1e-6)  # last step lands on alpha = 1: x_0


def test_img2img_start_mapping():
    assert img2img_start(50, 1.0) == 0
    assert img2img_start(50, 0.0) == 50
    assert img2img_start(50, 0.6) == 20
    assert img2img_start(10, 0.29) == 7  # round(2.9) = 3 steps run
    assert ddim_timesteps(50)[img2img_start(50, 0.6)] == 591


@pytest.mark.parametrize("sampler_fn", SAMPLERS, ids=lambda f: f.__name__)
def test_img2img_in_the_gaussian_world(sampler_fn):
    # Noise a clean sample to the first remaining timestep and run the rest: the result is again a
    # sample of the data, still correlated with where it started.
    mu, s, n = 2.0, 1.0, 50
    x_clean = (mu + s * _z(seed=7)).astype("float32")
    start = img2img_start(n, 0.5)
    timesteps = ddim_timesteps(n) if sampler_fn is sample else karras_timesteps(n)
    x_t = add_noise(x_clean, _z(seed=8), alpha_at(timesteps[start : start + 1]).item())
    world = GaussianWorld(mu, s)
    x0 = _np(sampler_fn(world, x_t, _contexts()[0], None, num_steps=n, guidance_scale=1.0,
                        start_step=start))
    assert len(world.batches) == n - start
    assert x0.mean() == pytest.approx(mu, abs=0.05) and x0.std() == pytest.approx(s, rel=0.05)
    assert 0.5 < np.corrcoef(x0.ravel(), x_clean.ravel())[0, 1] < 0.99
    same = sampler_fn(world, x_clean, _contexts()[0], None, num_steps=n, guidance_scale=1.0,
                      start_step=n)  # strength 0: nothing to do
    np.testing.assert_array_equal(_np(same), x_clean)


# --- Bad arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler_fn", SAMPLERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs, error, name", [
    ({"num_steps": 0}, ValueError, "num_steps"),
    ({"num_steps": 2.5}, TypeError, "num_steps"),
    ({"num_steps": True}, TypeError, "num_steps"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"guidance_scale": "7.5"}, TypeError, "guidance_scale"),
    ({"start_step": -1}, ValueError, "start_step"),
    ({"start_step": 6}, ValueError, "start_step"),
    ({"context": np.zeros((3, 77, D))}, ValueError, "context"),
    ({"context": np.zeros((77, D))}, ValueError, "context"),
    ({"context": None}, ValueError, "context"),
    ({"unconditional_context": np.zeros((2, 77, D + 1))}, ValueError, "unconditional_context"),
    ({"unconditional_context": None}, ValueError, "unconditional_context"),
    ({"noise": np.zeros((2, 8, 8))}, ValueError, "noise"),
])
def test_bad_arguments(sampler_fn, kwargs, error, name):
    context, unconditional = _contexts(2)
    args = dict(unet=_Recorder(), noise=_z(2)[:, :8, :8], context=context,
                unconditional_context=unconditional, num_steps=5)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        sampler_fn(**args)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(0)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(1001)
    with pytest.raises(TypeError, match="num_steps"):
        ddim_timesteps(np.float64(5))
    with pytest.raises(ValueError, match="strength"):
        img2img_start(50, 1.5)
    with pytest.raises(ValueError, match="strength"):
        img2img_start(50, float("nan"))
    with pytest.raises(TypeError, match="strength"):
        img2img_start(50, "0.5")
    with pytest.raises(ValueError, match="num_steps"):
        img2img_start(0, 0.5)
    assert sampler.ddim_timesteps(np.int64(3)).tolist() == [999, 500, 0]
