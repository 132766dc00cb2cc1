"""The checks of chapter 8 (performance) accept right answers and name typical mistakes."""

import numpy as np
import pytest

from sdlearn.exercises import ch08_performance as ch08


def run(check, answer, capsys):
    ok = check(answer)
    return ok, capsys.readouterr().out


def assert_rejected(check, answer, capsys, *fragments):
    ok, out = run(check, answer, capsys)
    assert ok is False, out
    assert out.startswith("Not yet: "), out
    assert "Hint: " in out, out
    for fragment in fragments:
        assert fragment in out, out


# --- Exercise 1: conv FLOPs ---------------------------------------------------------------------

def test_conv_flops_right_answers(capsys):
    ok, out = run(ch08.check_conv_flops, lambda h, w, k, ci, co: 2 * h * w * k * k * ci * co,
                  capsys)
    assert ok is True and out.startswith("Correct!"), out
    # numpy integers and floats are numbers too
    assert run(ch08.check_conv_flops,
               lambda h, w, k, ci, co: float(np.int64(2) * h * w * k**2 * ci * co), capsys)[0]


def test_the_reference_conv_count_is_sd_v1s_first_conv():
    # SD v1's UNet input conv at 512 px: 64x64, 3x3, 4 -> 320 channels.
    assert ch08.conv_flops(64, 64, 3, 4, 320) == 2 * 64 * 64 * 9 * 4 * 320


@pytest.mark.parametrize("answer, fragment", [
    (lambda h, w, k, ci, co: h * w * k * k * ci * co, "multiply-adds (MACs)"),
    (lambda h, w, k, ci, co: 2 * h * w * ci * co, "counts squared"),
    (lambda h, w, k, ci, co: 2 * h * w * k * ci * co, "not k"),
    (lambda h, w, k, ci, co: 2 * h * w * k * k * ci, "you gave"),
    (lambda h, w, k, ci, co: None, "returned None"),
    (lambda h, w, k, ci, co: 1 / 0, "raised ZeroDivisionError"),
    (lambda h, w, k, ci, co: "many", "as a number"),
    (None, "pass a function"),
])
def test_conv_flops_wrong_answers(answer, fragment, capsys):
    assert_rejected(ch08.check_conv_flops, answer, capsys, fragment)


# --- Exercise 2: TFLOP of one image -------------------------------------------------------------

def test_image_tflop_right_answers(capsys):
    right = 2 * 30 * 0.803 + 2.51 + 2 * 0.013
    assert abs(ch08.image_tflop() - right) < 1e-12
    assert run(ch08.check_image_tflop, right, capsys)[0] is True
    assert run(ch08.check_image_tflop, 2 * 30 * 0.803 + 2.51, capsys)[0] is True  # text: ~0
    assert run(ch08.check_image_tflop, np.float32(50.7), capsys)[0] is True


@pytest.mark.parametrize("answer, fragment", [
    (30 * 0.803 + 2.51, "one UNet pass per step"),
    (30 * 0.803, "one UNet pass per step"),
    (2 * 30 * 0.803, "UNet alone"),
    (2 * 50 * 0.803 + 2.51, "50 steps"),
    (2 * 30 * 0.803 + 31 * 2.51, "decoder runs once"),
    (50.7e12, "in TFLOP"),
    (100.0, "is not it"),
    (None, "as a number"),
    (True, "as a number"),
])
def test_image_tflop_wrong_answers(answer, fragment, capsys):
    assert_rejected(ch08.check_image_tflop, answer, capsys, fragment)


# --- Exercise 3: bytes of attention scores ------------------------------------------------------

def test_score_memory_right_answer(capsys):
    right = 2 * 8 * 9216**2 * 2
    assert ch08.score_bytes() == right
    ok, out = run(ch08.check_score_memory, right, capsys)
    assert ok is True and "GiB" in out, out


@pytest.mark.parametrize("answer, fragment", [
    (2 * 8 * 9216**2 * 4, "float32"),
    (1 * 8 * 9216**2 * 2, "doubles the batch"),
    (2 * 1 * 9216**2 * 2, "own score matrix"),
    (2 * 8 * 9216 * 2, "T x T"),
    (2 * 8 * 768**4 * 2, "latent pixels"),
    (2.72, "in bytes"),
    (2.53, "in bytes"),
    (12345, "is not it"),
    ("2.7 GB", "as a number"),
])
def test_score_memory_wrong_answers(answer, fragment, capsys):
    assert_rejected(ch08.check_score_memory, answer, capsys, fragment)


# --- Exercise 4: the bfloat16 gap ---------------------------------------------------------------

def bfloat16(x):
    import keras

    return float(keras.ops.convert_to_numpy(
        keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")))


def test_bfloat16_gap_right_answer_is_what_keras_computes(capsys):
    assert bfloat16(258.0) == 258.0 and bfloat16(256.9) == 256.0 and bfloat16(257.1) == 258.0
    assert run(ch08.check_bfloat16_gap, 2, capsys)[0] is True
    assert run(ch08.check_bfloat16_gap, 2.0, capsys)[0] is True


@pytest.mark.parametrize("answer, fragment", [
    (2.0**-7, "gap above 1.0"),
    (2.0**-10, "float16's gap above 1.0"),
    (0.25, "float16's gap above 256"),
    (2.0**-15, "float32's gap"),
    (1, "implicit"),
    (4, "above 512"),
    (3, "is not it"),
    (None, "as a number"),
])
def test_bfloat16_gap_wrong_answers(answer, fragment, capsys):
    assert_rejected(ch08.check_bfloat16_gap, answer, capsys, fragment)
