"""Tests for the synthetic shapes world: captions, splits, rendering, determinism, analyser."""

import dataclasses
import itertools
import re
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdlearn import shapes
from sdlearn.shapes import (BACKGROUNDS, COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, Scene,
                            analyse, caption, make_dataset, parse_caption, render,
                            sample_scenes, score)

ATTRIBUTES = [f.name for f in dataclasses.fields(Scene)]

# The caption grammar, written out independently of shapes.CAPTION_PATTERN.
GRAMMAR = re.compile(
    r"a( (small|large))? (red|green|blue|yellow|purple|orange) (circle|square|triangle)"
    r"( in the (top left|top right|bottom left|bottom right|center))?"
    r"( on a (black|white|gray) background)?")


def degrade(image, rng):
    """Roughly what a small generative model's sample looks like: blurred (Gaussian,
    radius 1), noisy (sigma 10 levels), colours shifted (+/-15 per channel), a few specks."""
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=1))
    x = np.asarray(blurred, np.float32)
    x = x + rng.normal(0, 10, x.shape) + rng.uniform(-15, 15, size=3)
    for _ in range(5):  # single-pixel specks of a random colour
        i, j = rng.integers(image.shape[0], size=2)
        x[i, j] = rng.integers(0, 256, size=3)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ground_truth():
    # "all" split: held-out triples are drawn (and must be read back) too.
    images, _, scenes = make_dataset(1000, seed=123, split="all")
    return images, scenes


# ---- Vocabulary ------------------------------------------------------------------------
def test_palette_colours_are_far_from_each_other_and_from_backgrounds():
    assert set(shapes.PALETTE) == set(COLOURS)
    assert set(shapes.BACKGROUND_RGB) == set(BACKGROUNDS)
    assert set(shapes.ANCHORS) == set(POSITIONS)
    rgb = list(shapes.PALETTE.values()) + list(shapes.BACKGROUND_RGB.values())
    for a, b in itertools.combinations(rgb, 2):
        assert np.linalg.norm(np.subtract(a, b)) >= 100, (a, b)


# ---- Captions --------------------------------------------------------------------------
def test_full_captions_follow_the_grammar_and_parse_back():
    scene = Scene("large", "red", "circle", "top left", "black")
    assert caption(scene) == "a large red circle in the top left on a black background"
    assert caption(Scene("small", "blue", "square", "center", "gray")) == (
        "a small blue square in the center on a gray background")
    for scene in sample_scenes(300, seed=0, split="all"):
        text = caption(scene)
        assert GRAMMAR.fullmatch(text), text
        assert parse_caption(text) == dataclasses.asdict(scene)


def test_dropped_parts_are_absent_and_the_rest_parses():
    rng = np.random.default_rng(0)
    seen_lengths = set()
    for scene in sample_scenes(500, seed=1, split="all"):
        text = caption(scene, rng, drop_probability=0.5)
        assert GRAMMAR.fullmatch(text), text
        named = parse_caption(text)
        seen_lengths.add(len(named))
        # Colour and shape are always there; whatever is named is the scene's.
        assert named["colour"] == scene.colour and named["shape"] == scene.shape
        assert all(named[k] == getattr(scene, k) for k in named)
        assert ("background" in named) == ("background" in text)
        assert ("size" in named) == text.startswith(("a small", "a large"))
        assert ("position" in named) == (" in the " in text)
    assert seen_lengths == {2, 3, 4, 5}  # every amount of dropping happens
    assert caption(Scene("small", "red", "triangle", "center", "white"), rng, 1.0) == (
        "a red triangle")


def test_parse_caption_rejects_other_text():
    for bad in ["a pink circle", "a red hexagon", "red circle", "a red circle in the middle",
                "a large red circle on a black background in the center"]:
        with pytest.raises(ValueError):
            parse_caption(bad)


# ---- Splits ----------------------------------------------------------------------------
def test_splits_respect_the_held_out_triples():
    assert 6 <= len(HELD_OUT) <= 10
    assert HELD_OUT <= set(itertools.product(COLOURS, SHAPES, POSITIONS))
    triple = lambda s: (s.colour, s.shape, s.position)  # noqa: E731
    train = sample_scenes(5000, seed=0, split="train")
    assert not any(triple(s) in HELD_OUT for s in train)
    # Every word of the vocabulary is still trained on, in other combinations.
    for name, values in [("size", SIZES), ("colour", COLOURS), ("shape", SHAPES),
                         ("position", POSITIONS), ("background", BACKGROUNDS)]:
        assert {getattr(s, name) for s in train} == set(values)
    assert len({triple(s) for s in train}) == 90 - len(HELD_OUT)
    heldout = sample_scenes(500, seed=0, split="heldout")
    assert {triple(s) for s in heldout} == set(HELD_OUT)
    everything = sample_scenes(5000, seed=0, split="all")
    assert len({triple(s) for s in everything}) == 90
    with pytest.raises(ValueError):
        sample_scenes(10, seed=0, split="test")


# ---- Rendering and determinism ---------------------------------------------------------
def test_render_shape_dtype_and_determinism():
    scene = Scene("large", "yellow", "triangle", "bottom right", "white")
    image = render(scene)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render(scene))  # no rng: deterministic
    assert (image[0, 0] == 255).all()  # the background
    jittered = [render(scene, rng=np.random.default_rng(s)) for s in range(2)]
    assert not np.array_equal(jittered[0], jittered[1])
    assert render(scene, image_size=128).shape == (128, 128, 3)


def test_small_and_large_differ_clearly():
    def area(size):
        image = render(Scene(size, "red", "square", "center", "black"))
        return (image.sum(axis=-1) > 0).sum()
    assert area("large") > 2 * area("small")  # 1.5x the side, 2.25x the area


def test_jittered_shapes_stay_inside_the_image():
    # A shape cut by the image edge would lose width or height (not both by the same
    # amount), and a big cut would shrink it below the smallest jittered size.
    rng = np.random.default_rng(0)
    smallest = 2 * shapes.HALF_SIZE["large"] * (1 - shapes.SIZE_JITTER) * 64 - 1
    for shape, position in itertools.product(SHAPES, POSITIONS):
        for _ in range(20):
            image = render(Scene("large", "green", shape, position, "black"), rng=rng)
            ys, xs = np.nonzero(image.sum(axis=-1) > 0)
            height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
            assert abs(height - width) <= 1 and min(height, width) >= smallest


def test_make_dataset_is_deterministic_from_the_seed():
    a_images, a_captions, a_scenes = make_dataset(64, seed=7)
    b_images, b_captions, b_scenes = make_dataset(64, seed=7)
    assert np.array_equal(a_images, b_images)
    assert a_captions == b_captions and a_scenes == b_scenes
    c_images, c_captions, c_scenes = make_dataset(64, seed=8)
    assert not np.array_equal(a_images, c_images)
    assert a_captions != c_captions and a_scenes != c_scenes
    assert a_images.shape == (64, 64, 64, 3) and a_images.dtype == np.uint8
    for text, scene in zip(a_captions, a_scenes):  # captions describe their own image
        assert all(getattr(scene, k) == v for k, v in parse_caption(text).items())
    assert any(len(parse_caption(t)) < 5 for t in a_captions)  # default drop 0.3
    assert make_dataset(0, seed=0)[0].shape == (0, 64, 64, 3)


def test_make_dataset_is_fast():
    start = time.perf_counter()
    make_dataset(2000, seed=0)
    seconds = time.perf_counter() - start
    print(f"\n2000 images in {seconds:.2f} s (20k: ~{10 * seconds:.0f} s)")
    assert seconds < 6  # i.e. 20k images well under a minute


# ---- The analyser ----------------------------------------------------------------------
def test_analyser_reads_rendered_scenes(ground_truth):
    images, scenes = ground_truth
    accuracy = score(images, scenes)
    print(f"\nclean: {accuracy}")
    assert set(accuracy) == set(ATTRIBUTES) | {"all"}
    for name in ATTRIBUTES:
        assert accuracy[name] >= 0.99, (name, accuracy)


def test_analyser_reads_degraded_scenes(ground_truth):
    images, scenes = ground_truth
    rng = np.random.default_rng(0)
    degraded = np.stack([degrade(image, rng) for image in images])
    assert np.abs(degraded.astype(int) - images).mean() > 5  # really degraded
    accuracy = score(degraded, scenes)
    print(f"\ndegraded: {accuracy}")
    for name in ATTRIBUTES:
        assert accuracy[name] >= 0.97, (name, accuracy)


def test_analyser_works_at_another_resolution():
    images, _, scenes = make_dataset(100, seed=5, image_size=128, split="all")
    assert score(images, scenes)["all"] >= 0.99


def test_score_notices_wrong_scenes(ground_truth):
    images, scenes = ground_truth
    images, scenes = images[:200], scenes[:200]
    shuffled = scenes[1:] + scenes[:1]
    accuracy = score(images, shuffled)
    assert accuracy["all"] < 0.1 and all(accuracy[k] < 0.8 for k in ATTRIBUTES)


def test_analyser_handles_images_without_a_shape():
    rng = np.random.default_rng(0)
    for name, rgb in shapes.BACKGROUND_RGB.items():
        blank = np.full((64, 64, 3), rgb, np.uint8)
        assert analyse(blank) == Scene(None, None, None, None, name)
        noisy = np.clip(blank + rng.normal(0, 10, blank.shape), 0, 255).astype(np.uint8)
        assert analyse(noisy) == Scene(None, None, None, None, name)
        specks = blank.copy()
        specks[rng.integers(64, size=10), rng.integers(64, size=10)] = (255, 0, 0)
        assert analyse(specks).shape is None
    # Junk must not crash: pure noise, a thin line, an RGBA image.
    assert isinstance(analyse(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), Scene)
    line = np.zeros((64, 64, 3), np.uint8)
    line[30, 5:60] = 255
    assert analyse(line).shape is None
    rgba = np.dstack([render(Scene("small", "red", "circle", "center", "gray")),
                      np.full((64, 64), 255, np.uint8)])
    assert analyse(rgba) == Scene("small", "red", "circle", "center", "gray")
