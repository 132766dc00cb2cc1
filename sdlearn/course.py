"""Helpers the notebooks share: which track runs, showing sdlearn's own source, plotting,
printing a difference.

The course runs on one of two tracks, chosen by ONE setting, the environment variable
``SDLEARN_TRACK`` (or the ``track`` argument):

- ``tiny`` (default): the small model sdlearn trained itself on the shapes world; it ships
  with the package, so everything runs offline in minutes on a laptop CPU.
- ``sd-v1``: Stable Diffusion v1.4 with KerasCV's published weights, once downloaded with
  ``sdlearn download`` (4.3 GB; a 512 px image takes minutes on a CPU).
"""

import inspect
import math
import os

from sdlearn.checks import check_choice

TRACKS = ("tiny", "sd-v1")


def track(name=None):
    """The track in use: ``name``, else $SDLEARN_TRACK, else "tiny"."""
    name = name or os.environ.get("SDLEARN_TRACK", "tiny")
    check_choice("SDLEARN_TRACK", name, TRACKS)
    return name


def load_pipeline(name=None, **kwargs):
    """The StableDiffusion pipeline of the track in use, announcing which one made the outputs."""
    from sdlearn.pipeline import StableDiffusion

    sd = StableDiffusion(track(name), **kwargs)
    print(f"Track: {sd.weights_source}; default image size {sd.config.image_size} px")
    return sd


def show_source(obj):
    """Display the source of an sdlearn function or class, syntax-highlighted."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def show_images(images, titles=None, suptitle=None, columns=None, size=2.0):
    """Images (N, H, W, 3) uint8 in a grid, each with its title; pixel axes labelled."""
    import matplotlib.pyplot as plt

    columns = columns or len(images)
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            ax.imshow(images[i])
            ax.set_title(titles[i] if titles else f"image {i}", fontsize=8)
            ax.set_xlabel("x (px)", fontsize=7)
            ax.set_ylabel("y (px)", fontsize=7)
            ax.tick_params(labelsize=6)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    plt.show()


def at_most(difference, floor=1e-8):
    """A printable bound on a max |difference|: the power of ten just above it, and at least
    ``floor``, as "<= 1e-05". Float rounding differs between CPUs (one processor's kernels gave
    1.4e-06 where another's gave 2.1e-06, or 0.0 where another gave 4.7e-06), so a notebook
    prints the bound, which is the same on every machine, not the digits, which are not."""
    difference = float(difference)
    if not math.isfinite(difference) or difference < 0:
        raise ValueError(f"a max |difference| is a finite number >= 0, got {difference}")
    bound = 10.0 ** math.ceil(math.log10(max(difference, floor)))
    return f"<= {bound:.0e}"
