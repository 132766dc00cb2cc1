"""Argument checks shared by the sampler, the pipeline and the commands: say what is wrong,
by name."""

import argparse
import numbers

import numpy as np


def check_int(name, value, low, high=np.inf):
    """Raise a TypeError/ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be " + (f">= {low}" if high == np.inf else
                                               f"in [{low}, {high}]") + f", got {value}")


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
