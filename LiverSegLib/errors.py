"""Typed errors of LiverSegLib.

The CLI maps :class:`InputError` (and its subclasses) to exit code 2 with its one-line message,
:class:`RemoteError` to exit code 1 with its one-line message, and everything else to exit code 1 as an internal
error. Front ends (the Slicer logic) catch these types instead of parsing text.
"""

from __future__ import annotations

__all__ = ["LiverSegError", "InputError", "ModelError", "OutputExistsError", "CancelledError", "RemoteError"]


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


class RemoteError(LiverSegError):
    """A server LiverSeg talks to (a PACS over DICOMweb) is unreachable or failed: not the user's input, not a bug.

    The message is one line naming the server and what failed.
    """
