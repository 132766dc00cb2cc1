"""Chapter 5 exercises: the noise schedule, the DDIM step, classifier-free guidance, callbacks.

Each ``check_*`` prints "Correct!" or says what is wrong with a hint, and returns True/False.
The checks recompute the right answer from ``sdlearn.sampler``'s schedule, so they stay right if
the schedule's constants are ever changed.
"""

import numbers

import numpy as np

from sdlearn import sampler
from sdlearn.exercises import verdict


def _as_array(value):
    """A learner's result as a float64 numpy array (numpy, Keras or TF tensors all work)."""
    if value is None:
        return None
    try:
        from keras import ops

        return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
    except Exception:  # not a tensor Keras knows: let numpy try
        return np.asarray(value, dtype=np.float64)


def _call(fn, *args):
    """(result, problem): call the learner's function, turning an exception into a message."""
    try:
        return _as_array(fn(*args)), None
    except Exception as error:  # a learner's bug: report it instead of a traceback
        return None, f"calling your function raised {type(error).__name__}: {error}"


def _close(a, b, tol=1e-5):
    return a is not None and a.shape == np.shape(b) and np.allclose(a, b, rtol=tol, atol=tol)


# --- Exercise 1: where the signal-to-noise ratio crosses 1 -------------------------------------

def snr_crossing():
    """The first t whose SNR alpha_t / (1 - alpha_t) is below 1 (alpha_t < 0.5): t = 354."""
    a = sampler.ALPHAS_CUMPROD
    return int(np.argmax(a / (1.0 - a) < 1.0))


def check_snr_crossing(t):
    """Exercise: the first timestep at which noise outweighs signal (SNR < 1)."""
    a = sampler.ALPHAS_CUMPROD
    snr = a / (1.0 - a)
    answer = snr_crossing()
    hint = ("Compute snr = alphas / (1 - alphas) from sampler.ALPHAS_CUMPROD and find the first "
            "index where it is below 1 (np.argmax of a boolean array gives the first True).")
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        return verdict([f"give the timestep as a number, got {t!r}"], hint)
    if not float(t).is_integer():
        return verdict([f"{t} is not a timestep: timesteps are the integers 0 .. 999 (did you "
                        "give an SNR value instead of the t where it crosses 1?)"], hint)
    t = int(t)
    if t == answer:
        return verdict([])
    if not 0 <= t < len(a):
        problem = f"{t} is outside the schedule's timesteps 0 .. {len(a) - 1}"
    elif t == answer - 1:
        problem = (f"off by one: at t = {t} the SNR is still {snr[t]:.4f}, not below 1 yet")
    elif t == int(np.argmax(np.sqrt(a) < 0.5)) or t == int(np.argmax(snr < 0.5)):
        problem = (f"at t = {t} the SNR is {snr[t]:.3f}: you compared the wrong quantity. The "
                   "SNR is alpha / (1 - alpha), a ratio of variances; it is 1 where alpha = 0.5")
    elif snr[t] >= 1:
        problem = f"at t = {t} the SNR is {snr[t]:.3g}, still at least 1: look later"
    else:
        problem = f"at t = {t} the SNR ({snr[t]:.3g}) is below 1, but it already was earlier"
    return verdict([problem], hint)


# --- Exercise 2: one DDIM step ------------------------------------------------------------------

def _ddim_inputs():
    rng = np.random.default_rng(5)
    x_t = rng.standard_normal((2, 4, 4, 4))
    eps = rng.standard_normal((2, 4, 4, 4))
    return x_t, eps, float(sampler.ALPHAS_CUMPROD[799]), float(sampler.ALPHAS_CUMPROD[599])


def _ddim(x_t, eps, a_t, a_prev, root=np.sqrt):
    pred_x0 = (x_t - root(1 - a_t) * eps) / root(a_t)
    return root(a_prev) * pred_x0 + root(1 - a_prev) * eps, pred_x0


def check_ddim_step(my_ddim_step):
    """Exercise: ``my_ddim_step(x_t, eps, alpha_t, alpha_prev) -> x_prev`` (numpy arrays)."""
    x_t, eps, a_t, a_prev = _ddim_inputs()
    hint = ("First solve x_t = sqrt(alpha_t) x0 + sqrt(1 - alpha_t) eps for x0 (pred_x0), then "
            "noise pred_x0 to alpha_prev with the same eps: sqrt(alpha_prev) pred_x0 + "
            "sqrt(1 - alpha_prev) eps.")
    result, problem = _call(my_ddim_step, x_t.copy(), eps.copy(), a_t, a_prev)
    if problem:
        return verdict([problem], hint)
    if result is None:
        return verdict(["your function returned None: did you forget `return`?"], hint)
    if result.shape != x_t.shape:
        return verdict([f"the result has shape {result.shape}, but x_prev has x_t's shape "
                        f"{x_t.shape} (return x_prev only, not a tuple)"], hint)
    right, pred_x0 = _ddim(x_t, eps, a_t, a_prev)
    if _close(result, right):
        again, _ = _call(my_ddim_step, x_t.copy(), eps.copy(), a_t, a_prev)
        if not _close(again, result, 1e-12):
            return verdict(["two calls with the same inputs gave different results: DDIM with "
                            "eta = 0 adds no fresh noise"], hint)
        return verdict([])
    wrong = [
        (x_t, "your function returned x_t unchanged: replace the placeholder with the update"),
        (pred_x0, "you returned pred_x0, the estimate of the clean latent; the step should "
                  "re-noise it to alpha_prev"),
        (_ddim(x_t, eps, a_prev, a_t)[0], "alpha_t and alpha_prev are swapped: this step goes "
                                          "up in noise, from alpha_prev to alpha_t"),
        (_ddim(x_t, eps, a_t, a_prev, root=lambda v: v)[0],
         "you used alpha where the formula has sqrt(alpha): alpha is a share of *variance*, "
         "the coefficients of x0 and eps are its square roots"),
        (np.sqrt(a_prev) * pred_x0, "you dropped the noise term sqrt(1 - alpha_prev) eps: "
                                    "x_prev must still carry the noise of level alpha_prev"),
    ]
    for candidate, message in wrong:
        if _close(result, candidate):
            return verdict([message], hint)
    error = np.abs(result - right).max()
    return verdict([f"the result differs from the DDIM step by up to {error:.3g}"], hint)


# --- Exercise 3: classifier-free guidance -------------------------------------------------------

def check_guidance(my_guidance):
    """Exercise: ``my_guidance(eps_unconditional, eps_conditional, guidance_scale) -> eps``."""
    rng = np.random.default_rng(3)
    u, c = rng.standard_normal((2, 1, 4, 4, 4))
    s = 7.5
    hint = ("Start from the unconditional prediction and move guidance_scale times along the "
            "difference the prompt makes: eps_u + s * (eps_c - eps_u).")
    result, problem = _call(my_guidance, u.copy(), c.copy(), s)
    if problem:
        return verdict([problem], hint)
    if result is None:
        return verdict(["your function returned None: did you forget `return`?"], hint)
    if result.shape != u.shape:
        return verdict([f"the result has shape {result.shape}, expected {u.shape}"], hint)
    if _close(result, u + s * (c - u)):
        checks = [(1.0, c, "at guidance_scale 1 the result should be exactly the conditional "
                           "prediction"),
                  (0.0, u, "at guidance_scale 0 the result should be exactly the unconditional "
                           "prediction")]
        for scale, expected, message in checks:
            at_scale, problem = _call(my_guidance, u.copy(), c.copy(), scale)
            if problem or not _close(at_scale, expected):
                return verdict([problem or message + " (do not special-case the scale)"], hint)
        return verdict([])
    wrong = [
        (c, "you returned the conditional prediction: that is guidance_scale 1, no guidance"),
        (u, "you returned the unconditional prediction: the prompt is ignored"),
        (c + s * (u - c), "the roles are swapped: this moves *away* from the prompt, towards "
                          "the unconditional prediction"),
        (s * (c - u), "you kept only the difference: add it to the unconditional prediction"),
        (c + s * (c - u), "you started from the conditional prediction: start from the "
                          "unconditional one (at s = 1 the result must be eps_c)"),
        (s * c, "scaling the conditional prediction is not guidance: what gets amplified is "
                "its *difference* from the unconditional prediction"),
        (u + s * c, "add s times the difference eps_c - eps_u, not s times eps_c"),
    ]
    for candidate, message in wrong:
        if _close(result, candidate):
            return verdict([message], hint)
    error = np.abs(result - (u + s * (c - u))).max()
    return verdict([f"the result differs from guided noise by up to {error:.3g}"], hint)


# --- Exercise 4: what a callback sees -----------------------------------------------------------

def check_timesteps_seen(timesteps, num_steps=8):
    """Exercise: the timesteps a callback records during ``text_to_image(num_steps=8)``."""
    hint = ("Pass callback=lambda i, t, x_t, pred_x0: seen.append(t) to sd.text_to_image(..., "
            f"num_steps={num_steps}) and give the list `seen`.")
    expected = [int(t) for t in sampler.ddim_timesteps(num_steps)]
    try:
        seen = [int(t) for t in timesteps]
    except (TypeError, ValueError):
        return verdict([f"give a list of timesteps (integers), got {timesteps!r}"], hint)
    if seen == expected:
        return verdict([], success=f"Correct! {num_steps} steps, each timestep once, noisiest "
                                   f"first: {seen}")
    if not seen:
        problem = "the list is empty: did the callback run (and append to the list you passed)?"
    elif len(seen) == 2 * num_steps:
        problem = (f"{len(seen)} timesteps for {num_steps} steps: each appears twice? (the list "
                   "was filled by two runs, or the loop stepped twice)")
    elif len(seen) != num_steps:
        problem = f"{len(seen)} timesteps, but the sampler runs {num_steps} steps"
    elif sorted(seen) == sorted(expected):
        problem = "the right timesteps in the wrong order: the sampler goes from noisy (999) to 0"
    elif len(set(seen)) < len(seen):
        problem = "a timestep appears twice: each step of the loop should see a new one"
    else:
        problem = (f"these are not the timesteps of {num_steps} DDIM steps (those start at 999 "
                   "and end at 0): did you use another num_steps?")
    return verdict([problem], hint)
