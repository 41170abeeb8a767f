"""The one error type for bad pose input."""

from __future__ import annotations


class PoseFormatError(ValueError):
    """A pose file is unreadable, unsafe, of the wrong shape, or unusable for windowing.

    The message always names the file, and the sequence/agent when one is at fault.
    """
