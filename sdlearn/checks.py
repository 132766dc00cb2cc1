"""Argument checks shared by the sampler, the pipeline and the commands: say what is wrong,
by name."""

import argparse
import math
import numbers

import numpy as np


def _bounds(low, high):
    return f">= {low}" if high == math.inf else f"in [{low}, {high}]"


def check_int(name, value, low, high=math.inf):
    """Raise a TypeError/ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be {_bounds(low, high)}, got {value}")


def check_number(name, value, low, high=math.inf):
    """Raise a TypeError/ValueError naming ``name`` unless ``value`` is a finite number in
    [low, high] (not NaN, not infinite: either would turn every pixel into NaN, then black)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (low <= value <= high and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number {_bounds(low, high)}, got {value}")


def check_bool(name, value):
    """Raise a TypeError naming ``name`` unless ``value`` is True or False (a switch)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_choice(name, value, choices):
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def positive_int(text):
    """An argparse type: ``text`` as an int >= 1, else a message saying so."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text):
    """An argparse type: ``text`` as an int >= 0 (a count, a seed), else a message saying so."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text):
    """An argparse type: ``text`` as a finite float >= 0 (a guidance scale), else a message."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value
