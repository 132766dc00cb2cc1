"""The checked exercises of chapters 5 (sampling) and 7 (beyond text-to-image): right answers
pass, typical wrong answers fail with the message that explains them."""

import numpy as np
import pytest

from sdlearn import sampler
from sdlearn.exercises import ch05_sampling as ch05
from sdlearn.exercises import ch07_beyond as ch07


def run(check, *args, **kwargs):
    """(returned bool, printed text) of a check."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = check(*args, **kwargs)
    return ok, out.getvalue()


def assert_rejects(check, answer, *fragments):
    ok, text = run(check, *answer) if isinstance(answer, tuple) else run(check, answer)
    assert ok is False, text
    assert text.startswith("Not yet: ") and "Hint: " in text, text
    for fragment in fragments:
        assert fragment in text, text


# --- Chapter 5 ----------------------------------------------------------------------------------

def test_snr_crossing_right_answer():
    a = sampler.ALPHAS_CUMPROD
    t = int(np.argmax(a / (1 - a) < 1))
    assert t == 354
    assert run(ch05.check_snr_crossing, t) == (True, "Correct!\n")
    assert run(ch05.check_snr_crossing, np.int64(t))[0] is True
    assert run(ch05.check_snr_crossing, 354.0)[0] is True


@pytest.mark.parametrize("answer, fragment", [
    (None, "give the timestep as a number"),
    (0.5, "is not a timestep"),
    (353, "off by one"),
    (521, "wrong quantity"),   # sqrt(alpha) < 0.5: amplitude, not variance
    (100, "still at least 1"),
    (700, "already was earlier"),
    (1000, "outside the schedule"),
])
def test_snr_crossing_wrong_answers(answer, fragment):
    assert_rejects(ch05.check_snr_crossing, answer, fragment)


def right_ddim(x_t, eps, alpha_t, alpha_prev):
    pred_x0 = (x_t - np.sqrt(1 - alpha_t) * eps) / np.sqrt(alpha_t)
    return np.sqrt(alpha_prev) * pred_x0 + np.sqrt(1 - alpha_prev) * eps


def test_ddim_step_accepts_numpy_and_the_sampler():
    assert run(ch05.check_ddim_step, right_ddim) == (True, "Correct!\n")
    # The sampler's own step (Keras tensors, float32) is right too.
    assert run(ch05.check_ddim_step, lambda *args: sampler.ddim_step(*args)[0])[0] is True


@pytest.mark.parametrize("answer, fragment", [
    (lambda x_t, eps, a, ap: x_t, "unchanged"),
    (lambda x_t, eps, a, ap: (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a), "you returned pred_x0"),
    (lambda x_t, eps, a, ap: right_ddim(x_t, eps, ap, a), "swapped"),
    (lambda x_t, eps, a, ap: ap * (x_t - (1 - a) * eps) / a + (1 - ap) * eps, "sqrt(alpha)"),
    (lambda x_t, eps, a, ap: np.sqrt(ap) * (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a),
     "dropped the noise term"),
    (lambda x_t, eps, a, ap: None, "returned None"),
    (lambda x_t, eps, a, ap: (right_ddim(x_t, eps, a, ap), x_t), "not a tuple"),
    (lambda x_t, eps, a, ap: 1 / 0, "raised ZeroDivisionError"),
    (lambda x_t, eps, a, ap: right_ddim(x_t, eps, a, ap) + 0.1, "differs from the DDIM step"),
])
def test_ddim_step_wrong_answers(answer, fragment):
    assert_rejects(ch05.check_ddim_step, answer, fragment)


def test_ddim_step_with_fresh_noise_is_rejected():
    rng = np.random.default_rng(0)

    def stochastic(x_t, eps, a, ap):  # right on average, but not deterministic
        return right_ddim(x_t, eps, a, ap) + 1e-7 * rng.standard_normal(x_t.shape)

    assert_rejects(ch05.check_ddim_step, stochastic, "no fresh noise")


def test_guidance_right_answers():
    assert run(ch05.check_guidance, lambda u, c, s: u + s * (c - u)) == (True, "Correct!\n")
    # The same formula rearranged is just as right.
    assert run(ch05.check_guidance, lambda u, c, s: (1 - s) * u + s * c)[0] is True


@pytest.mark.parametrize("answer, fragment", [
    (lambda u, c, s: c, "you returned the conditional prediction"),
    (lambda u, c, s: u, "the prompt is ignored"),
    (lambda u, c, s: c + s * (u - c), "roles are swapped"),
    (lambda u, c, s: s * (c - u), "kept only the difference"),
    (lambda u, c, s: c + s * (c - u), "started from the conditional"),
    (lambda u, c, s: s * c, "not guidance"),
    (lambda u, c, s: u + s * c, "not s times eps_c"),
    (lambda u, c, s: u + 7.5 * (c - u), "at guidance_scale 1"),  # ignores its argument
    (lambda u, c, s: u[0], "shape"),
])
def test_guidance_wrong_answers(answer, fragment):
    assert_rejects(ch05.check_guidance, answer, fragment)


def test_timesteps_seen():
    right = [int(t) for t in sampler.ddim_timesteps(8)]
    assert right[0] == 999 and right[-1] == 0
    ok, text = run(ch05.check_timesteps_seen, right)
    assert ok and text.startswith("Correct!")
    assert run(ch05.check_timesteps_seen, np.array(right))[0] is True


@pytest.mark.parametrize("answer, fragment", [
    ([], "empty"),
    (None, "give a list"),
    ([int(t) for t in sampler.ddim_timesteps(8)] * 2, "appears twice"),
    ([int(t) for t in sampler.ddim_timesteps(8)][::-1], "wrong order"),
    ([int(t) for t in sampler.ddim_timesteps(10)], "10 timesteps"),
    ([int(t) for t in sampler.ddim_timesteps(8)][:-1] + [999], "appears twice"),
    ([int(t) for t in sampler.ddim_timesteps(9)][:8], "another num_steps"),
])
def test_timesteps_seen_wrong_answers(answer, fragment):
    assert_rejects(ch05.check_timesteps_seen, answer, fragment)


# --- Chapter 7 ----------------------------------------------------------------------------------

def test_img2img_start_right_answer():
    start = sampler.img2img_start(20, 0.43)
    t = int(sampler.ddim_timesteps(20)[start])
    assert (start, t) == (11, 421)
    ok, text = run(ch07.check_img2img_start, start, t)
    assert ok and text.startswith("Correct! 9 of 20 steps run, from t = 421")


@pytest.mark.parametrize("answer, fragment", [
    ((None, None), "start_step should be an integer"),
    ((9, 421), "number of steps that *run*"),
    ((12, 421), "rounds strength x num_steps"),
    ((11, 430), "not strength x 1000"),
    ((11, 368), "not the one at the start step"),  # ddim_timesteps(20)[12]
    ((11, 400), "not one of the 20 DDIM timesteps"),
    ((11, 421.5), "timestep should be an integer"),
])
def test_img2img_start_wrong_answers(answer, fragment):
    assert_rejects(ch07.check_img2img_start, answer, fragment)


def slerp_walk(a, b, n):
    return np.stack([ch07.reference_slerp(a, b, w) for w in np.linspace(0, 1, n)])


def test_noise_walk_right_answer():
    assert run(ch07.check_noise_walk, slerp_walk) == (True, "Correct!\n")


def nlerp_walk(a, b, n):  # linear, then rescaled to the ends' norm: right size, uneven steps
    frames = np.stack([(1 - w) * a + w * b for w in np.linspace(0, 1, n)])
    norms = np.linalg.norm(frames.reshape(n, -1), axis=1)
    target = np.linspace(np.linalg.norm(a), np.linalg.norm(b), n)
    return frames * (target / norms)[:, None, None, None]


@pytest.mark.parametrize("answer, fragment", [
    (lambda a, b, n: np.stack([a] * n), "last frame should be noise_b"),
    (lambda a, b, n: np.stack([(1 - w) * a + w * b for w in np.linspace(0, 1, n)]),
     "standard deviation"),
    (lambda a, b, n: slerp_walk(b, a, n), "backwards"),
    (lambda a, b, n: slerp_walk(a, b, n)[1:], "expected 9 frames"),
    (lambda a, b, n: None, "returned None"),
    (nlerp_walk, "not evenly spaced"),
])
def test_noise_walk_wrong_answers(answer, fragment):
    assert_rejects(ch07.check_noise_walk, answer, fragment)


def test_lerp_norm():
    ok, text = run(ch07.check_lerp_norm, 0.707)
    assert ok and text.startswith("Correct! sqrt(0.5) = 0.707")
    a, b = np.random.default_rng(0).standard_normal((2, 10000))  # the measurement itself
    assert run(ch07.check_lerp_norm, float(np.linalg.norm(0.5 * a + 0.5 * b) / np.linalg.norm(a)))[0]


@pytest.mark.parametrize("answer, fragment", [
    (None, "give a number"),
    (0.5, "almost orthogonal"),
    (0.25, "ratio of variances"),
    (1.0, "what slerp keeps"),
    (0.9, "measure it"),
])
def test_lerp_norm_wrong_answers(answer, fragment):
    assert_rejects(ch07.check_lerp_norm, answer, fragment)
