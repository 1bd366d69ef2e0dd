"""Tests that must fail on a deliberately broken variant of the code, so that none passes by accident."""

import contextlib

import pytest


def fails_when(broken, check) -> None:
    """``check`` raises AssertionError while the patches in ``broken`` (context managers) are active."""
    with contextlib.ExitStack() as stack:
        for patch in broken:
            stack.enter_context(patch)
        with pytest.raises(AssertionError):
            check()
