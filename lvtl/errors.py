"""The error hierarchy of lvtl.

Every error a user can cause derives from :class:`LvtlError`. The CLI maps each class to an
exit code and prints one line (``str(error)``), which names the file or case and the problem.
"""

from __future__ import annotations

import difflib
from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class LvtlError(Exception):
    """Base class of every error lvtl raises on purpose."""

    exit_code = 1


class ConfigError(LvtlError):
    """A bad option, argument or configuration value."""

    exit_code = 2


class DicomError(LvtlError):
    """A DICOM file or series that cannot be read or is inconsistent."""

    exit_code = 3


class LabelError(LvtlError):
    """A label file that is unreadable, has the wrong geometry or unexpected values."""

    exit_code = 4


class PreprocessError(LvtlError):
    """A case that cannot be preprocessed."""

    exit_code = 5


class ThicknessError(LvtlError):
    """A myocardial wall whose thickness cannot be measured; the message says why."""

    exit_code = 6


class ArtifactError(LvtlError):
    """A model artifact that is malformed, unsigned, untrusted or tampered with."""

    exit_code = 7
    why = "invalid"  # the refusal's code in a site's results (no paths, no detail)


class UntrustedKeyError(ArtifactError):
    """An artifact signed by a key the site does not pin."""

    why = "untrusted_key"


class RevokedKeyError(ArtifactError):
    """An artifact signed by a key the site has revoked."""

    why = "revoked_key"


class OldVersionError(ArtifactError):
    """An artifact older than the site's minimum version."""

    why = "version_too_old"


class TrainError(LvtlError):
    """Training that cannot go on (non-finite loss, out of memory, no usable case)."""

    exit_code = 8


class SeriesProblems(DicomError):
    """Several problems found in one DICOM series; ``problems`` lists each as one line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (at most 120 characters), or its class
    name when it has none: for the one-line errors lvtl prints about a file."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:120]


def choose(kind: type[E], value: str | E, what: str,
           error: type[LvtlError] = ConfigError) -> E:
    """``value`` as a member of the Enum ``kind``, or a :class:`ConfigError` naming ``what``,
    the bad value, the allowed values and the closest one ("did you mean"); ``error`` is the
    class raised (the caller's own, where a bad choice is its kind of error)."""
    try:
        return kind(value)
    except ValueError:
        allowed = [str(m.value) for m in kind]
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise error(f"unknown {what} {value!r}{hint}; choose one of: "
                          f"{', '.join(allowed)}") from None
