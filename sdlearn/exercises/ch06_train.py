"""Checked exercises for chapter 6, training the tiny model (``notebooks/06_train``).

Each ``check_*`` prints "Correct!" or what is wrong with a hint, and returns True or False.
"""

import numpy as np

from sdlearn.exercises import verdict


def _call(function, *args):
    """(result, problem): the learner's function applied, or what went wrong."""
    if function is None:
        return None, "no answer yet: replace None with your function."
    if not callable(function):
        return None, f"expected a function, got {type(function).__name__}."
    try:
        result = function(*args)
    except Exception as error:  # the learner's code: report, do not crash the notebook
        return None, f"your function raised {type(error).__name__}: {error}"
    if result is None:
        return None, "your function returned None: return the result."
    return np.asarray(result, dtype="float64"), None


def check_latent_scale(latent_scale):
    """Exercise 1: ``latent_scale(latents)`` -> the number that gives the latents unit
    variance when they are multiplied by it (SD's 0.18215 was measured this way)."""
    rng = np.random.default_rng(0)
    latents = 2.5 * rng.standard_normal((64, 8, 8, 4)) + 0.3
    scale, problem = _call(latent_scale, latents)
    if problem is None:
        scale = float(scale)
        std = latents.std()
        if np.isclose(scale, 0.18215):
            problem = ("0.18215 is SD's number, measured on SD's own autoencoder; measure "
                       "the scale of these latents.")
        elif np.isclose(scale, std, rtol=1e-3):
            problem = ("that is the latents' standard deviation; the scale multiplies them "
                       "down to 1, so it is its inverse.")
        elif np.isclose(scale, 1 / latents.var(), rtol=1e-3):
            problem = "1 / variance over-shrinks them: divide by the standard deviation."
        elif np.isclose(scale, 1 / np.sqrt((latents**2).mean()), rtol=1e-3):
            problem = "close, but that is 1 / root-mean-square; use the standard deviation."
        elif not np.isclose(scale, 1 / std, rtol=1e-3):
            problem = (f"latents * {scale:.4g} have standard deviation "
                       f"{(latents * scale).std():.4g}, not 1.")
    return verdict([problem], hint="np.std of all the latent numbers together, then 1 / it.")


def check_noisy_latent(make_noisy):
    """Exercise 2: ``make_noisy(x0, noise, alpha)`` -> x_t of the forward process, where
    ``alpha`` is the cumulative alpha_t (the signal's share of the variance)."""
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 4, 8, 8, 4))
    alpha = 0.3
    expected = np.sqrt(alpha) * x0 + np.sqrt(1 - alpha) * noise
    x_t, problem = _call(make_noisy, x0, noise, alpha)
    if problem is None:
        if x_t.shape != x0.shape:
            problem = f"x_t has shape {x_t.shape}, expected the latent's {x0.shape}."
        elif np.allclose(x_t, alpha * x0 + (1 - alpha) * noise):
            problem = ("alpha is a share of the variance; scale the two terms by square "
                       "roots so that the variances add up to 1.")
        elif np.allclose(x_t, np.sqrt(alpha) * x0 + (1 - alpha) * noise):
            problem = "the noise term needs the square root too: sqrt(1 - alpha)."
        elif np.allclose(x_t, np.sqrt(1 - alpha) * x0 + np.sqrt(alpha) * noise):
            problem = "signal and noise are swapped: alpha is the signal's share."
        elif not np.allclose(x_t, expected):
            problem = "that is not the forward process's x_t."
    return verdict([problem], hint="x_t = sqrt(alpha) x0 + sqrt(1 - alpha) noise.")


def _cross_entropy(logits):
    """Mean cross-entropy of each row against the diagonal label."""
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probabilities))


def check_clip_loss(clip_loss):
    """Exercise 3: ``clip_loss(logits)`` for a (B, B) matrix of image i vs caption j
    similarities -> CLIP's loss, a number (image i belongs with caption i)."""
    logits = np.array([[4.0, 1.0, 0.5, -1.0], [0.0, 3.0, 2.5, 0.0],
                       [1.0, 2.0, 2.0, 1.5], [3.0, 0.5, 0.0, 0.5]])
    expected = 0.5 * (_cross_entropy(logits) + _cross_entropy(logits.T))
    loss, problem = _call(clip_loss, logits)
    if problem is None:
        if loss.size != 1:
            problem = f"the loss is one number, got an array of shape {loss.shape}."
        else:
            loss = float(loss)
            if np.isclose(loss, _cross_entropy(logits)):
                problem = ("that is only 'which caption for each image'; CLIP also asks "
                           "'which image for each caption' (the transposed logits) and "
                           "averages the two.")
            elif np.isclose(loss, _cross_entropy(logits.T)):
                problem = ("that is only 'which image for each caption'; average it with "
                           "the other direction.")
            elif np.isclose(loss, 2 * expected):
                problem = "the sum of the two directions: CLIP takes their mean."
            elif loss < 0:
                problem = "a cross-entropy is never negative: check the sign."
            elif not np.isclose(loss, expected):
                problem = f"{loss:.4f} is not it; expected a value near {expected:.1f}."
    return verdict([problem], hint="Cross-entropy of each row against label i (softmax over "
                   "the row), the same on logits.T, and the mean of the two.")


def check_images_seen(n, steps, batch_size, num_images):
    """Exercise 4: how many training examples the UNet stage processes, ``steps`` optimizer
    steps of ``batch_size``, and (the second number) how many times that is the
    ``num_images`` of the dataset. ``n`` is a pair (examples, passes)."""
    if n is None:
        return verdict(["no answer yet: replace None with a pair (examples, passes)."],
                       hint="Every step takes one batch.")
    try:
        examples, passes = (float(v) for v in n)
    except (TypeError, ValueError):
        return verdict([f"expected a pair of numbers (examples, passes), got {n!r}."],
                       hint="For example (1000, 2.5).")
    expected = steps * batch_size
    problems = []
    if examples == steps:
        problems.append("that is the number of steps; each step uses a whole batch.")
    elif examples == num_images:
        problems.append("that is the size of the dataset; the stage runs for a number of "
                        "steps, not epochs.")
    elif examples != expected:
        problems.append(f"{examples:g} examples is not it.")
    elif not np.isclose(passes, expected / num_images, rtol=1e-2):
        problems.append(f"{passes:g} passes is not it: divide the examples by the dataset's "
                        "size.")
    return verdict(problems, hint="examples = steps x batch size; passes = examples / images.")
