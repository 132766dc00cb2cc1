"""Chapter 7 exercises: image-to-image's starting point, and interpolating noise.

Each ``check_*`` prints "Correct!" or says what is wrong with a hint, and returns True/False.
"""

import numbers

import numpy as np

from sdlearn import sampler
from sdlearn.exercises import verdict
from sdlearn.exercises.ch05_sampling import _call

# --- Exercise 1: where image-to-image starts ----------------------------------------------------

IMG2IMG_STEPS, IMG2IMG_STRENGTH = 20, 0.43


def check_img2img_start(start_step, timestep):
    """Exercise: with num_steps=20 and strength=0.43, the step index sampling starts at, and the
    timestep the encoded image is noised to."""
    n, strength = IMG2IMG_STEPS, IMG2IMG_STRENGTH
    start = sampler.img2img_start(n, strength)
    t_start = int(sampler.ddim_timesteps(n)[start])
    hint = (f"sampler.img2img_start({n}, {strength}) gives the step index; the timestep is "
            f"that entry of sampler.ddim_timesteps({n}).")
    for name, value in (("start_step", start_step), ("timestep", timestep)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not float(value).is_integer():
            return verdict([f"{name} should be an integer, got {value!r}"], hint)
    start_step, timestep = int(start_step), int(timestep)
    runs = n - start
    problems = []
    if start_step != start:
        if start_step == runs:
            problems.append(f"{start_step} is the number of steps that *run* (strength x "
                            f"num_steps); sampling starts after skipping the other {start}")
        elif start_step == n - int(np.floor(strength * n)):
            problems.append(f"{start_step} rounds strength x num_steps = {strength * n:.1f} "
                            "down, as diffusers does; sdlearn rounds to the nearest integer")
        else:
            problems.append(f"step {start_step} is not where a {n}-step sampler with strength "
                            f"{strength} starts")
    if timestep != t_start:
        if timestep in (round(strength * 1000), round(strength * 999)):
            problems.append(f"the timestep is not strength x 1000 (or 999): it is the DDIM "
                            f"timestep of the start step, ddim_timesteps({n})[start]")
        elif timestep in [int(t) for t in sampler.ddim_timesteps(n)]:
            problems.append(f"t = {timestep} is one of the sampler's timesteps, but not the one "
                            f"at the start step (check the index, counting from 0)")
        else:
            problems.append(f"t = {timestep} is not one of the {n} DDIM timesteps")
    return verdict(problems, hint, success=f"Correct! {runs} of {n} steps run, from t = {t_start}.")


# --- Exercise 2: a walk between two noises ------------------------------------------------------

def reference_slerp(v0, v1, w):
    """Spherical interpolation: sin((1 - w) theta) / sin(theta) v0 + sin(w theta) / sin(theta) v1,
    theta the angle between the flattened v0 and v1."""
    cos = np.dot(v0.ravel(), v1.ravel()) / (np.linalg.norm(v0) * np.linalg.norm(v1))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    return (np.sin((1 - w) * theta) * v0 + np.sin(w * theta) * v1) / np.sin(theta)


def _angle(a, b):
    cos = np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def check_noise_walk(my_noise_walk, num_frames=9):
    """Exercise: ``my_noise_walk(noise_a, noise_b, num_frames)`` -> (num_frames, h, w, 4) frames
    going from noise_a to noise_b, every frame a plausible Gaussian noise, evenly spaced."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((2, 8, 8, 4))
    b *= np.linalg.norm(a) / np.linalg.norm(b)  # equal sizes: slerp's steps are then equal angles
    hint = ("Use spherical interpolation (slerp) with weights np.linspace(0, 1, num_frames): "
            "it turns a into b along the sphere where Gaussian noise lives, keeping its size.")
    frames, problem = _call(my_noise_walk, a.copy(), b.copy(), num_frames)
    if problem:
        return verdict([problem], hint)
    if frames is None:
        return verdict(["your function returned None: did you forget `return`?"], hint)
    if frames.shape != (num_frames,) + a.shape:
        return verdict([f"expected {num_frames} frames of shape {a.shape}, i.e. "
                        f"{(num_frames,) + a.shape}; got {frames.shape}"], hint)
    if np.allclose(frames[0], b) and np.allclose(frames[-1], a):
        return verdict(["the walk goes backwards: the first frame should be noise_a"], hint)
    if not np.allclose(frames[0], a, atol=1e-5):
        return verdict(["the first frame should be noise_a (weight 0)"], hint)
    if not np.allclose(frames[-1], b, atol=1e-5):
        return verdict(["the last frame should be noise_b (weight 1)"], hint)
    stds = frames.reshape(num_frames, -1).std(axis=1)
    k = int(np.argmin(stds))
    if stds[k] < 0.85:
        return verdict([f"frame {k} has standard deviation {stds[k]:.2f}, not about 1: a "
                        "linear mix of two independent noises is too small (the UNet never saw "
                        "such weak noise)"], hint)
    steps = [_angle(frames[i], frames[i + 1]) for i in range(num_frames - 1)]
    if max(steps) > 1.02 * min(steps):
        return verdict([f"the frames are not evenly spaced: the angle between neighbours runs "
                        f"from {min(steps):.3f} to {max(steps):.3f} rad"], hint)
    expected = np.stack([reference_slerp(a, b, w) for w in np.linspace(0, 1, num_frames)])
    if not np.allclose(frames, expected, atol=1e-4):
        error = np.abs(frames - expected).max()
        return verdict([f"the frames differ from slerp by up to {error:.3g}"], hint)
    return verdict([])


# --- Exercise 3: why not linear interpolation ---------------------------------------------------

def check_lerp_norm(ratio):
    """Exercise: for two independent standard-normal noises a, b with many entries,
    |0.5 a + 0.5 b| / |a| is about what?"""
    hint = ("For independent noises variances add: var(0.5 a + 0.5 b) = 0.25 + 0.25. The norm "
            "is proportional to the standard deviation.")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        return verdict([f"give a number, got {ratio!r}"], hint)
    answer = np.sqrt(0.5)
    if abs(ratio - answer) <= 0.02:
        return verdict([], success=f"Correct! sqrt(0.5) = {answer:.3f}: the midpoint of a "
                                   "linear walk is noise that is 29% too weak.")
    if abs(ratio - 0.5) <= 0.02:
        problem = ("0.5 would hold if a and b pointed the same way; independent noises are "
                   "almost orthogonal, so their halves add like the sides of a right triangle")
    elif abs(ratio - 0.25) <= 0.02:
        problem = "0.25 is the ratio of variances; the norm goes with the standard deviation"
    elif abs(ratio - 1.0) <= 0.02:
        problem = "1 is what slerp keeps; the linear midpoint is shorter than both ends"
    else:
        problem = (f"{ratio} is not it; measure it with a, b = "
                   "np.random.default_rng(0).standard_normal((2, 10000))")
    return verdict([problem], hint)
