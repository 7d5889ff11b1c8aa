"""Exception hierarchy of vptq-rs.

Everything the package raises on purpose derives from :class:`VptqError`. Errors caused by a
value the caller passed also derive from ``ValueError`` so generic handlers keep working.
The Rust extension raises these same classes (it imports them from this module).
"""

from __future__ import annotations


class VptqError(Exception):
    """Base class of every error vptq-rs raises on purpose."""


class InvalidValueError(VptqError, ValueError):
    """An argument has an impossible value, dtype or shape."""


class CheckpointError(VptqError, ValueError):
    """A checkpoint or Hessian file is missing, corrupt, or disagrees with its config."""


class UnsupportedModelError(VptqError, ValueError):
    """The model architecture is not one vptq-rs knows how to walk."""


class VptqIOError(VptqError, OSError):
    """Reading or writing a file failed (permissions, full disk, ...)."""


__all__ = [
    "CheckpointError",
    "InvalidValueError",
    "UnsupportedModelError",
    "VptqError",
    "VptqIOError",
]
