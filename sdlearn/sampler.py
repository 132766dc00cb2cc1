"""Sampling: from Gaussian noise to a latent image, one denoising step at a time.

Stable Diffusion's UNet is trained (DDPM, Ho et al. 2020) to predict the noise eps that was mixed
into a clean latent x_0 at noise level t:

    x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps,     eps ~ N(0, I),   t = 0 .. 999

Notation: as in the DDIM paper (Song et al. 2021), ``alpha_t`` is the *cumulative* product
prod_{s <= t} (1 - beta_s) that DDPM writes alpha-bar_t; KerasCV and diffusers call the table
``alphas_cumprod``. alpha_t is the share of signal variance left in x_t.

Generating runs the forward process backwards: start from pure noise x_T, and at each of a few
timesteps ask the UNet for eps_theta(x_t, t, c), estimate x_0, and step to a less noisy x. This
module holds the schedule, the forward process (``add_noise``, also used by training and
image-to-image), classifier-free guidance (``guided_noise``) and two samplers that share one loop:
DDIM (``sample``: the SD paper's and KerasCV's) and Euler on Karras et al.'s noise levels
(``sample_euler``). All per-step work is ``keras.ops`` on tensors; numpy only computes the schedule,
so the loop body can be jit-compiled and runs on any Keras backend.
"""


import numpy as np
from keras import ops

from sdlearn.checks import check_int, check_number


# --- The noise schedule -------------------------------------------------------------------------

def alphas_cumprod(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012):
    """alpha_t = prod_{s <= t} (1 - beta_s), t = 0 .. T-1: SD v1's "scaled linear" schedule.

    beta_t, the variance of the noise added at step t, grows so that sqrt(beta_t) is linear in t.
    alpha_0 = 0.99915 (almost clean), alpha_999 = 0.0047 (signal-to-noise ratio alpha / (1 - alpha)
    of 0.005: almost pure noise). float64: a constant of the model, computed once on the host.
    """
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


ALPHAS_CUMPROD = alphas_cumprod()  # (1000,) the table every sampler and the trainer read


def ddim_timesteps(num_steps, num_train_timesteps=1000):
    """The ``num_steps`` integer timesteps DDIM visits, noisiest first: 999, 979, ..., 20, 0 for 50.

    Spacing: KerasCV 0.9's round(i * (T-1) / (n-1)), i = 0 .. n-1, evenly over 0..999 with both
    ends included, so our images match KerasCV's. Before 2024 KerasCV (like the CompVis DDIM code)
    used arange(1, T, T // n) = 1, 21, ..., 981, whose first step is at t = 981 although the sampler
    starts from pure noise (t = 999). ``num_steps = 1`` gives [0] as in KerasCV: one step at t = 0
    barely denoises, so it returns (almost) the noise; use two steps or more.
    """
    check_int("num_steps", num_steps, 1, num_train_timesteps)
    ratio = (num_train_timesteps - 1) / max(num_steps - 1, 1)  # n = 1: arange(1) * ratio = [0]
    return np.round(np.arange(num_steps) * ratio).astype(np.int64)[::-1]


def alpha_at(timesteps, num_train_timesteps=1000):
    """alpha at fractional timesteps: log sigma, sigma = sqrt((1 - alpha) / alpha), interpolated
    linearly between integer t (k-diffusion's t <-> sigma map). Equals the table at integer t."""
    log_sigma = np.interp(timesteps, np.arange(num_train_timesteps),
                          _log_sigma(num_train_timesteps))
    return 1.0 / (1.0 + np.exp(2 * log_sigma))  # alpha = 1 / (1 + sigma^2)


def karras_timesteps(num_steps, rho=7.0, num_train_timesteps=1000):
    """Karras et al. 2022 (eq. 5) noise levels as fractional timesteps, noisiest first.

    sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho spreads the
    steps evenly in sigma^(1/rho): rho = 7 puts many more steps at low noise (where details form)
    than DDIM's even-in-t spacing; rho = 1 is even in sigma. sigma_min, sigma_max = 0.029, 14.6,
    the table's ends.
    """
    check_int("num_steps", num_steps, 1)
    log_sigma = _log_sigma(num_train_timesteps)
    lo, hi = np.exp(log_sigma[0] / rho), np.exp(log_sigma[-1] / rho)  # sigma_min/max^(1/rho)
    sigmas = (hi + np.linspace(0.0, 1.0, num_steps) * (lo - hi)) ** rho
    return np.interp(np.log(sigmas), log_sigma, np.arange(num_train_timesteps))


def _log_sigma(num_train_timesteps):
    a = alphas_cumprod(num_train_timesteps)
    return 0.5 * np.log((1.0 - a) / a)  # increasing in t: log sigma from -3.5 to 2.7


# --- One step -----------------------------------------------------------------------------------

def add_noise(x0, noise, alpha_bar):
    """The forward process, a sample of q(x_t | x_0) = N(sqrt(alpha_t) x_0, (1 - alpha_t) I):
    x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps. ``alpha_bar``: one number, or (B,) for one
    noise level per sample (training)."""
    a = _coefficient(alpha_bar, x0)
    return ops.sqrt(a) * ops.cast(x0, "float32") + ops.sqrt(1.0 - a) * ops.cast(noise, "float32")


def ddim_step(x_t, eps, alpha_t, alpha_prev):
    """One DDIM step, eta = 0 (Song et al. 2021, eq. 12), from noise level alpha_t to alpha_prev.

        pred_x0 = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)
        x_prev  = sqrt(alpha_prev) pred_x0 + sqrt(1 - alpha_prev) eps
    The forward process solved for x_0, then re-noised to the lower level with the *same* eps: no
    fresh noise, so the sampler is a deterministic map from x_T to x_0.
    Returns (x_prev, pred_x0).
    """
    a_t, a_prev = _coefficient(alpha_t, x_t), _coefficient(alpha_prev, x_t)
    pred_x0 = (x_t - ops.sqrt(1.0 - a_t) * eps) / ops.sqrt(a_t)
    return ops.sqrt(a_prev) * pred_x0 + ops.sqrt(1.0 - a_prev) * eps, pred_x0


def euler_step(x_t, eps, alpha_t, alpha_prev):
    """One Euler step of the probability-flow ODE in Karras et al. 2022's variables.

    Divide by sqrt(alpha): x_bar = x_t / sqrt(alpha_t) = x_0 + sigma eps, with the noise level
    sigma = sqrt((1 - alpha) / alpha). Along the ODE, dx_bar/dsigma = (x_bar - D(x_bar; sigma))
    / sigma = eps, the denoiser D being the predicted x_0; Euler steps x_bar by (sigma_prev - sigma)
    eps. Multiply out and this is exactly ``ddim_step`` (the tests check it): DDIM *is* Euler's
    method, and what Karras-style samplers change is where the steps go. Returns (x_prev, pred_x0),
    back in the sampler's variables.
    """
    a_t, a_prev = _coefficient(alpha_t, x_t), _coefficient(alpha_prev, x_t)
    sigma, sigma_prev = ops.sqrt((1.0 - a_t) / a_t), ops.sqrt((1.0 - a_prev) / a_prev)
    x_bar = x_t / ops.sqrt(a_t)
    pred_x0 = x_bar - sigma * eps                   # D(x_bar; sigma)
    x_bar_prev = x_bar + (sigma_prev - sigma) * eps  # slope (x_bar - D) / sigma = eps
    return x_bar_prev * ops.sqrt(a_prev), pred_x0


def _coefficient(alpha, x):
    # A noise level as a float32 tensor broadcasting over x: a number, or (B,) -> (B, 1, 1, 1).
    alpha = ops.cast(alpha, "float32")
    if len(alpha.shape) == 1:
        alpha = ops.reshape(alpha, (-1,) + (1,) * (len(x.shape) - 1))
    return alpha


# --- Classifier-free guidance -------------------------------------------------------------------

def guided_noise(unet, latent, timestep, context, unconditional_context, guidance_scale):
    """eps = eps_theta(x_t, t, empty) + s (eps_theta(x_t, t, c) - eps_theta(x_t, t, empty)).

    Classifier-free guidance (Ho & Salimans 2022): the same UNet predicts noise with the prompt's
    context c and with the empty prompt's; moving s times further along their difference
    exaggerates what the prompt changes (s = 7.5 by default; s = 0 ignores the prompt). Both
    predictions come from ONE call on a batch of 2B, rows [unconditional; conditional]: better use
    of the accelerator than KerasCV's two calls of B. At s = 1 the formula is just the conditional
    eps, so we skip the unconditional half: one call of batch B. ``timestep``: a number or (B,).
    """
    batch = ops.shape(latent)[0]
    t = ops.broadcast_to(ops.cast(timestep, "float32"), (batch,))
    if guidance_scale == 1.0:
        return ops.cast(unet([latent, t, context]), "float32")
    eps = unet([ops.concatenate([latent, latent]), ops.concatenate([t, t]),
                ops.concatenate([unconditional_context, context])])
    eps_unconditional, eps_conditional = ops.split(ops.cast(eps, "float32"), 2)
    return eps_unconditional + guidance_scale * (eps_conditional - eps_unconditional)


# --- Samplers -----------------------------------------------------------------------------------

def sample(unet, noise, context, unconditional_context, num_steps=50, guidance_scale=7.5,
           start_step=0, callback=None):
    """DDIM sampling (eta = 0): the latent x_0 (B, h, w, C) from the initial latent ``noise``.

    ``context``/``unconditional_context``: (B, 77, D) text encodings of the prompt and of the empty
    (or negative) prompt; batch 1 is repeated to B; the unconditional one may be None when
    guidance_scale == 1. ``start_step`` > 0 skips the noisiest steps (image-to-image: see
    ``img2img_start``). ``callback(i, t, x_t, pred_x0)`` is called after every step i, with x_t the
    latent that step started from and pred_x0 its estimate of the clean latent.
    """
    timesteps = ddim_timesteps(num_steps)
    return _denoise(unet, ddim_step, timesteps, ALPHAS_CUMPROD[timesteps], noise, context,
                    unconditional_context, guidance_scale, start_step, callback)


def sample_euler(unet, noise, context, unconditional_context, num_steps=50, guidance_scale=7.5,
                 start_step=0, callback=None, rho=7.0):
    """Euler sampling on Karras et al.'s noise levels ("Euler Karras"); arguments as ``sample``.

    Same loop, same guidance, the step written as Euler's method, fractional timesteps from
    ``karras_timesteps``. ``noise`` is x_T at sigma_max (diffusers' convention; k-diffusion
    scales it to sigma_max / sqrt(1 + sigma_max^2) = 0.998 of that). For image-to-image, noise
    x_0 to alpha_at(karras_timesteps(num_steps, rho)[start_step]).
    """
    timesteps = karras_timesteps(num_steps, rho)
    return _denoise(unet, euler_step, timesteps, alpha_at(timesteps), noise, context,
                    unconditional_context, guidance_scale, start_step, callback)


def _denoise(unet, step, timesteps, alphas, noise, context, unconditional_context,
             guidance_scale, start_step, callback):
    # The loop both samplers share: x_T -> x_{t_1} -> ... -> x_0, noisiest level first.
    check_int("start_step", start_step, 0, len(timesteps))
    x_t, context, unconditional_context = _check_inputs(noise, context, unconditional_context,
                                                        guidance_scale)
    alphas_prev = np.append(alphas[1:], 1.0)  # each step lands on the next level, the last on 1
    for i in range(start_step, len(timesteps)):
        eps = guided_noise(unet, x_t, timesteps[i], context, unconditional_context, guidance_scale)
        x_prev, pred_x0 = step(x_t, eps, alphas[i], alphas_prev[i])
        if callback is not None:
            callback(i, timesteps[i].item(), x_t, pred_x0)
        x_t = x_prev
    return x_t


def img2img_start(num_steps, strength):
    """The step image-to-image starts at: num_steps - round(strength * num_steps).

    ``strength`` in [0, 1] is the share of the sampler's steps that run (diffusers floors where we
    round). The caller encodes the image to x_0, noises it to the first remaining timestep, and
    samples from there (50 steps, strength 0.6: skip 20 steps, run 30 from t = 591):
        start = img2img_start(50, 0.6)
        x_t = add_noise(x0, noise, ALPHAS_CUMPROD[ddim_timesteps(50)[start]])
        latent = sample(unet, x_t, context, unconditional_context, 50, start_step=start)
    Strength 1 starts from t = 999, almost pure noise: the image is forgotten. Strength 0 gives
    start = num_steps: no step runs, ``sample`` returns its input (the clean x_0; there is no
    timestep to noise it to).
    """
    check_int("num_steps", num_steps, 1)
    check_number("strength", strength, 0, 1)
    return num_steps - round(strength * num_steps)


# --- Argument checks ----------------------------------------------------------------------------

def _check_inputs(noise, context, unconditional_context, guidance_scale):
    check_number("guidance_scale", guidance_scale, 0)  # 1: no guidance
    x = ops.cast(noise, "float32")
    if len(x.shape) != 4:
        raise ValueError(f"noise must have shape (B, h, w, C), got {tuple(x.shape)}")
    context = _check_context("context", context, x.shape[0])
    if unconditional_context is None and guidance_scale == 1.0:
        return x, context, None  # guided_noise will not need it
    unconditional_context = _check_context("unconditional_context", unconditional_context,
                                           x.shape[0])
    if tuple(unconditional_context.shape) != tuple(context.shape):
        raise ValueError(f"unconditional_context has shape {tuple(unconditional_context.shape)}, "
                         f"but context has shape {tuple(context.shape)}")
    return x, context, unconditional_context


def _check_context(name, c, batch):
    # (B, 77, D) or (1, 77, D), repeated to the batch of noise.
    if c is None or len(c.shape) != 3 or c.shape[0] not in (1, batch):
        raise ValueError(f"{name} must have shape (B, 77, D) with B = 1 or the batch of noise "
                         f"({batch}), got {None if c is None else tuple(c.shape)}")
    c = ops.cast(c, "float32")
    return ops.repeat(c, batch, axis=0) if c.shape[0] == 1 else c
