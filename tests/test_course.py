"""The notebooks' shared helpers that compute something (sdlearn/course.py)."""

import math

import pytest

from sdlearn.course import at_most, track


@pytest.mark.parametrize("difference, floor, expected", [
    (1.4e-6, 1e-8, "<= 1e-05"), (2.1e-6, 1e-8, "<= 1e-05"),  # one bound for two CPUs' digits
    (1e-5, 1e-8, "<= 1e-05"), (1.01e-5, 1e-8, "<= 1e-04"),  # a power of ten is its own bound
    (0.05, 1e-8, "<= 1e-01"), (0.007, 1e-8, "<= 1e-02"),
    (0.0, 1e-8, "<= 1e-08"), (3e-12, 1e-8, "<= 1e-08"),  # nothing below the floor
    (0.0, 1e-5, "<= 1e-05"), (4.7e-6, 1e-5, "<= 1e-05"),  # exact on one CPU, 4.7e-06 on another
    (12.0, 1e-8, "<= 1e+02"),
])
def test_at_most_is_the_power_of_ten_just_above(difference, floor, expected):
    assert at_most(difference, floor) == expected


@pytest.mark.parametrize("difference", [-1e-6, math.nan, math.inf])
def test_at_most_rejects_what_is_not_a_difference(difference):
    with pytest.raises(ValueError, match="finite number >= 0"):
        at_most(difference)


def test_track_names_the_allowed_values(monkeypatch):
    monkeypatch.setenv("SDLEARN_TRACK", "sd-v2")
    with pytest.raises(ValueError, match=r"one of \('tiny', 'sd-v1'\), got 'sd-v2'"):
        track()
    monkeypatch.delenv("SDLEARN_TRACK")
    assert track() == "tiny" and track("sd-v1") == "sd-v1"
