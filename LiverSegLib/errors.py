"""Typed errors of LiverSegLib.

The CLI maps :class:`InputError` (and its subclasses) to exit code 2 with its one-line message and
everything else to exit code 1. Front ends (the Slicer logic) catch these types instead of parsing text.
"""

from __future__ import annotations

__all__ = ["LiverSegError", "InputError", "ModelError", "OutputExistsError", "CancelledError"]


class LiverSegError(Exception):
    """Base class of every error LiverSegLib raises on purpose."""


class InputError(LiverSegError):
    """The user's input cannot be used (missing, unreadable, wrong kind of image, bad option).

    The message is one line that says what is wrong and what to do about it.
    """


class ModelError(InputError):
    """A model or checkpoint is missing, fails its checksum, needs pickle, or describes an unknown network."""


class OutputExistsError(InputError):
    """The output location already holds results and overwriting was not requested."""


class CancelledError(LiverSegError):
    """A run was cancelled through its progress callback."""
