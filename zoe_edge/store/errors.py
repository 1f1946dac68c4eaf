"""Why a pull failed. Every message says what happened and what to do; fronts show ``str(error)``."""

from __future__ import annotations


class PullError(Exception):
    """A pull failed; nothing half-written was put in place of the model file."""


class NotPullable(PullError):
    """The name is not a registry model, or its entry names no ``url`` to download from."""


class DownloadFailed(PullError):
    """The server refused the download or could not be reached. ``status``: its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DownloadInterrupted(DownloadFailed):
    """The connection was lost mid-body; the bytes received are kept and the next pull resumes."""

    def __init__(self, message: str, completed: int, total: int | None) -> None:
        super().__init__(message)
        self.completed = completed
        self.total = total


class NotEnoughSpace(PullError):
    """The disk cannot hold the download (checked first, or the disk filled up while writing)."""

    def __init__(self, message: str, needed: int | None, free: int | None) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


class DigestMismatch(PullError):
    """The file's SHA-256 is not the registry's: the download was removed (or an existing file left alone)."""

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class NotGGUF(PullError):
    """What arrived is not a complete GGUF model (an HTML error page, a truncated or foreign file)."""
