"""The synthetic shapes world: a small dataset where every fact about each image is known.

Each image is 64x64 RGB and shows one filled shape on a plain background. Its caption gives
some or all of the facts: ``a large red circle in the top left on a black background``.
Because the world is drawn in code (deterministic from a seed, nothing to download), we can
also go the other way. ``analyse`` reads an image back into its facts, and ``score`` uses it
to *measure* whether a model drew what the prompt asked for. That includes combinations the
model never saw in training (``HELD_OUT``), which is how we test generalisation.

    scene = Scene("large", "red", "circle", "top left", "black")
    caption(scene)            # 'a large red circle in the top left on a black background'
    image = render(scene)     # (64, 64, 3) uint8
    analyse(image) == scene   # True
"""

import re
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

# ---- The vocabulary and how each word looks ------------------------------------------------
SIZES = ("small", "large")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
BACKGROUNDS = ("black", "white", "gray")

# Saturated colours. Each is >= 100 RGB units (Euclidean) from every other colour and from
# every background, so they stay apart after blur, noise and colour shifts.
PALETTE = {"red": (215, 30, 40), "green": (40, 170, 60), "blue": (40, 80, 230),
           "yellow": (245, 235, 30), "purple": (150, 60, 200), "orange": (245, 130, 20)}
BACKGROUND_RGB = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}

# The anchor of each position: where the shape's centre goes, as (x, y) fractions of the side.
# The four quadrant centres and the image centre.
ANCHORS = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75),
           "bottom right": (0.75, 0.75), "center": (0.5, 0.5)}
# Half the side of the shape's bounding box, as a fraction of the image side (9 / 13 px at 64).
# A small shape spans about two cells of the 8x8 latent: smaller ones (7 px) came back from the
# tiny autoencoder as round blobs, whatever their shape.
HALF_SIZE = {"small": 0.14, "large": 0.21}
CENTRE_JITTER = 0.04  # with an rng, the centre moves by up to 4% of the side (~2.5 px) ...
SIZE_JITTER = 0.10  # ... and the half-size grows or shrinks by up to 10%
SUPERSAMPLE = 4  # draw 4x larger, then average 4x4 blocks: antialiased edges

# (colour, shape, position) triples that training never shows. Every colour, shape and
# position still appears in training in other combinations, so a model that composes
# concepts, instead of memorising whole scenes, can still draw these.
HELD_OUT = frozenset({
    ("red", "triangle", "top right"), ("green", "circle", "bottom left"),
    ("blue", "square", "center"), ("yellow", "circle", "top left"),
    ("purple", "triangle", "bottom right"), ("orange", "square", "top left"),
    ("red", "square", "bottom left"), ("blue", "triangle", "center"),
})
TRIPLES = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]  # all 90


@dataclass(frozen=True)
class Scene:
    """Everything about one image. ``analyse`` puts None where it cannot read a field."""

    size: str | None
    colour: str | None
    shape: str | None
    position: str | None
    background: str | None


# ---- Captions --------------------------------------------------------------------------
def _one_of(words):
    return "|".join(words)


# a [small|large] <colour> <shape> [in the <position>] [on a <background> background]
CAPTION_PATTERN = re.compile(
    rf"a (?:(?P<size>{_one_of(SIZES)}) )?(?P<colour>{_one_of(COLOURS)}) "
    rf"(?P<shape>{_one_of(SHAPES)})(?: in the (?P<position>{_one_of(POSITIONS)}))?"
    rf"(?: on a (?P<background>{_one_of(BACKGROUNDS)}) background)?")


def caption(scene, rng=None, drop_probability=0.0):
    """Describe a scene. Size, position and background are each left out with
    ``drop_probability``. Training captions then vary, and the model learns to choose the
    missing parts itself (and, with classifier-free guidance, to follow the ones given).
    Pass an rng to make the dropping reproducible. Without one, a fresh unseeded rng is used."""
    if drop_probability > 0:
        keep = (rng if rng is not None else np.random.default_rng()).random(3) >= drop_probability
    else:
        keep = (True, True, True)  # fully specified
    size = f"{scene.size} " if keep[0] else ""
    position = f" in the {scene.position}" if keep[1] else ""
    background = f" on a {scene.background} background" if keep[2] else ""
    return f"a {size}{scene.colour} {scene.shape}{position}{background}"


def parse_caption(text):
    """The attributes a caption names, e.g. {'colour': 'red', 'shape': 'circle'}."""
    match = CAPTION_PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a shapes-world caption: {text!r}")
    return {name: word for name, word in match.groupdict().items() if word is not None}


# ---- Scenes, images and datasets -------------------------------------------------------
def render(scene, image_size=64, rng=None):
    """Draw a scene as a (image_size, image_size, 3) uint8 array. It is deterministic when
    rng is None. Given an rng, the centre and size are jittered a little."""
    side = image_size * SUPERSAMPLE
    half = HALF_SIZE[scene.size] * side
    centre = np.array(ANCHORS[scene.position]) * side
    if rng is not None:
        half *= 1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
        centre += rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=2) * side
    x, y = np.clip(centre, half, side - half)  # keep the whole shape inside the image
    image = Image.new("RGB", (side, side), BACKGROUND_RGB[scene.background])
    draw, fill = ImageDraw.Draw(image), PALETTE[scene.colour]
    box = (x - half, y - half, x + half, y + half)  # the shape's bounding box, 2*half wide
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # apex at the top centre, base along the bottom: it fills half of its box
        draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BOX))


def sample_scenes(n, seed, split="train"):
    """n random scenes. "train" never yields a HELD_OUT triple, "heldout" yields only those,
    and "all" yields any of the 90. The result is deterministic from the seed."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
    triples = [t for t in TRIPLES if split == "all" or (t in HELD_OUT) == (split == "heldout")]
    rng = np.random.default_rng(seed)
    picks = zip(rng.integers(len(SIZES), size=n), rng.integers(len(triples), size=n),
                rng.integers(len(BACKGROUNDS), size=n))
    return [Scene(SIZES[s], *triples[t], BACKGROUNDS[b]) for s, t, b in picks]


def make_dataset(n, seed, image_size=64, drop_probability=0.3, split="train"):
    """images (n, H, W, 3) uint8, captions (list of str) and scenes, deterministic from seed."""
    scenes = sample_scenes(n, seed, split)
    rng = np.random.default_rng([seed, 1])  # a second stream: jitter and caption dropping
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    captions = []
    for i, scene in enumerate(scenes):
        images[i] = render(scene, image_size, rng)
        captions.append(caption(scene, rng, drop_probability))
    return images, captions, scenes


# ---- Reading an image back -------------------------------------------------------------
MIN_CONTRAST = 40.0  # pixels closer than this (RGB distance) to the background never count
MIN_AREA = 0.005  # a mask smaller than this fraction of the image means "no shape here"
TRIANGLE_SKEW = -0.25  # triangles ~ -0.57, circles and squares ~ 0 (see analyse)
SQUARE_KURTOSIS = 0.5  # squares ~ +1.2, circles ~ 0


def _nearest(rgb, table):
    """The name in table (name -> RGB) whose colour is closest to rgb."""
    return min(table, key=lambda name: np.linalg.norm(np.subtract(table[name], rgb)))


def _dilate(mask):
    """3x3 dilation: a pixel is set if it or any of its 8 neighbours is set."""
    height, width = mask.shape
    padded = np.pad(mask, 1)
    return np.any([padded[i:i + height, j:j + width] for i in range(3) for j in range(3)], axis=0)


def _moment(values, k):
    """The k-th standardised moment: 3 is skewness, 4 is kurtosis."""
    z = (values - values.mean()) / values.std()
    return (z**k).mean()


def analyse(image):
    """Read an image of this world back into a Scene. It is deterministic and has no
    learned parts. Each attribute comes from one simple feature:

    background  the background colour nearest to the median of the 2-px border.
    mask        pixels further from that colour than half the shape's contrast (its 99.5th
                percentile). Blur does not move this half-maximum level. Erode 3x3, then
                regrow inside the mask: specks smaller than 3x3 vanish, the outline returns.
    colour      the palette colour nearest to the median of the mask's higher-contrast half.
                That half is the shape's inside, not its edges blended with the background.
    position    the anchor nearest to the mask's centroid.
    size        the longest side of the mask's box, counting only rows and columns with at
                least 2 mask pixels. small <= 0.31 of the side, large >= 0.38, split at 0.35.
    shape       from moments of the pixel coordinates (x, y), so a few wrong pixels hardly
                matter. A triangle (apex up) has most pixels low down: the skewness of y is
                about -0.57, and 0 for the symmetric circle and square. A square's pixels
                spread evenly along x (a flat profile, kurtosis 1.8) but pile up in the
                middle along a diagonal (a tent, kurtosis 2.4). A circle looks the same in
                every direction. Kurtosis along both diagonals minus along both axes:
                square ~1.2, circle ~0.

    Model samples (blur, noise, off colours, specks) are handled too. If no shape is
    found, e.g. in a blank image, only the background is set and the rest is None.
    """
    image = np.asarray(image, dtype=np.float32)[..., :3]  # (H, W, 3)
    side = image.shape[0]
    border = np.ones(image.shape[:2], bool)
    border[2:-2, 2:-2] = False
    background_rgb = np.median(image[border], axis=0)  # a shape covers little of the border
    background = _nearest(background_rgb, BACKGROUND_RGB)

    contrast = np.linalg.norm(image - background_rgb, axis=-1)  # (H, W)
    raw_mask = contrast > max(MIN_CONTRAST, np.percentile(contrast, 99.5) / 2)
    mask = ~_dilate(~raw_mask)  # erode (dilate the background)
    for _ in range(4):  # regrow, but only onto pixels of the raw mask
        mask = _dilate(mask) & raw_mask
    if mask.sum() < MIN_AREA * side * side:
        return Scene(None, None, None, None, background)

    inside = mask & (contrast >= np.median(contrast[mask]))
    colour = _nearest(np.median(image[inside], axis=0), PALETTE)
    ys, xs = np.nonzero(mask)
    ys, xs = ys + 0.5, xs + 0.5  # pixel centres
    centroid = np.array([xs.mean(), ys.mean()]) / side
    position = min(ANCHORS, key=lambda p: np.linalg.norm(np.subtract(ANCHORS[p], centroid)))
    rows, cols = np.nonzero(mask.sum(axis=1) >= 2)[0], np.nonzero(mask.sum(axis=0) >= 2)[0]
    extent = (max(np.ptp(rows), np.ptp(cols)) + 1) / side
    size = "large" if extent > HALF_SIZE["small"] + HALF_SIZE["large"] else "small"
    diagonal_kurtosis = _moment(xs + ys, 4) + _moment(xs - ys, 4) - _moment(xs, 4) - _moment(ys, 4)
    if _moment(ys, 3) < TRIANGLE_SKEW:
        shape = "triangle"
    else:
        shape = "square" if diagonal_kurtosis > SQUARE_KURTOSIS else "circle"
    return Scene(size, colour, shape, position, background)


def score(images, scenes):
    """Fraction of images whose analysed attribute matches the scene, per attribute and for
    all five at once ("all")."""
    read = [analyse(image) for image in images]
    names = [f.name for f in fields(Scene)]
    correct = np.array([[getattr(r, a) == getattr(s, a) for a in names]
                        for r, s in zip(read, scenes)]).reshape(-1, len(names))  # (N, 5)
    result = {a: float(correct[:, i].mean()) for i, a in enumerate(names)}
    result["all"] = float(correct.all(axis=1).mean())
    return result
