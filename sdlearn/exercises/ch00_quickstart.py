"""Checked exercises for chapter 0, the quickstart (``notebooks/00_quickstart``).

Each ``check_*`` prints "Correct!" or what is wrong with a hint, and returns True or False.
"""

from sdlearn.config import SD_V1
from sdlearn.exercises import verdict


def _as_shape(shape):
    """A tuple of ints, or None when ``shape`` is not shape-like."""
    try:
        return tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        return None


def _shape_problem(shape):
    if shape is None:
        return "no answer yet: replace None with a shape, a tuple like (1, 2, 3)."
    if _as_shape(shape) is None:
        return f"a shape is a tuple of ints, got {shape!r}."
    return None


def check_latent_shape(shape):
    """Exercise 1: the shape of the initial noise latent of
    ``sd.text_to_image(prompt, batch_size=2, image_size=64)``."""
    problems = [_shape_problem(shape)]
    shape = _as_shape(shape) if problems[0] is None else None
    expected = (2, 64 // 8, 64 // 8, SD_V1.unet.latent_channels)  # (2, 8, 8, 4)
    if shape is not None and shape != expected:
        if len(shape) == 3:
            problems.append("a shape for a batch has 4 numbers: (batch, height, width, "
                            "channels).")
        elif shape[0] != 2:
            problems.append(f"the batch holds batch_size = 2 latents, not {shape[0]}.")
        elif shape[1:3] == (64, 64):
            problems.append("that is the image's size: the VAE's latent is 8 times smaller "
                            "in height and width.")
        elif shape[3] == 3:
            problems.append("a latent pixel has 4 channels, not the image's 3 colours.")
        elif shape[1:3] != expected[1:3]:
            problems.append(f"height and width {shape[1:3]} should be {expected[1:3]}: the "
                            "image side divided by the VAE's factor 8.")
        else:
            problems.append(f"{shape} is not it; compare with the shapes printed in the map.")
    return verdict(problems, hint="Look at the map of the system above: noise has the "
                   "latent's shape, (batch, H/8, W/8, 4).")


def check_context_shape(shape):
    """Exercise 2: the shape of ``sd.encode_text(three_prompts)`` on the sd-v1 track."""
    problems = [_shape_problem(shape)]
    shape = _as_shape(shape) if problems[0] is None else None
    c = SD_V1.text_encoder
    expected = (3, c.max_length, c.width)  # (3, 77, 768)
    if shape is not None and shape != expected:
        if shape == (3, c.max_length):
            problems.append("that is the shape of the token ids; the encoder gives each "
                            "token a vector.")
        elif shape == (3, c.width):
            problems.append("Stable Diffusion keeps one vector per position, all 77, not one "
                            "pooled vector per prompt.")
        elif shape[0] != 3:
            problems.append(f"one context per prompt: the batch dimension is 3, not {shape[0]}.")
        elif len(shape) == 3 and shape[1] != c.max_length:
            problems.append("every prompt is padded to 77 tokens, whatever its length.")
        elif len(shape) == 3 and shape[2] == c.vocab_size:
            problems.append("the vectors are the encoder's width, not one score per "
                            "vocabulary entry.")
        else:
            problems.append(f"{shape} is not it: on sd-v1 the text encoder is {c.width} wide.")
    return verdict(problems, hint="(prompts, tokens per prompt, width of the text encoder); "
                   "SD v1's CLIP encoder is 768 wide.")


def check_unet_calls(n):
    """Exercise 3: how many times the UNet runs in ``text_to_image(prompt, num_steps=20)``
    (guidance_scale 7.5, the default)."""
    if n is None:
        return verdict(["no answer yet: replace None with a number."],
                       hint="How many steps, and how many UNet calls per step?")
    problems = []
    if n == 40:
        problems.append("guidance needs the prompt's and the empty prompt's noise estimates, "
                        "but sdlearn gets both from ONE call on a batch of 2.")
    elif n in (19, 21):
        problems.append("one step per num_steps; the decoder runs once at the end, and it is "
                        "not the UNet.")
    elif n == 50:
        problems.append("50 is the default, but this call asks for num_steps=20.")
    elif n == 1:
        problems.append("the UNet runs inside the loop, once per step.")
    elif n != 20:
        problems.append(f"{n} is not it.")
    return verdict(problems, hint="Count them: replace sd.unet_call with a function that adds "
                   "1 to a counter and calls the original.")
