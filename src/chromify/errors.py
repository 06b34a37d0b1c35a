"""One exception hierarchy, so the CLI and the API can map any failure to a one-line message."""

from __future__ import annotations


class ChromifyError(Exception):
    """Base class: the message is shown to the user as it is, on one line."""


class ConfigError(ChromifyError):
    """params.yaml or a command-line value is missing or invalid."""


class InputImageError(ChromifyError):
    """An image file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataError(ChromifyError):
    """A manifest, shard or index is missing, inconsistent or corrupt."""


class GateError(ChromifyError):
    """The evaluation gate was asked an ill-posed question (e.g. a metric missing or not finite)."""


class RegistryError(ChromifyError):
    """A registry operation failed: unknown version or alias, corrupt entry, lost race."""


class ModelLoadError(ChromifyError):
    """A model directory, alias or version cannot be loaded, or its weights give non-finite colours (diverged)."""


class TrainingError(ChromifyError):
    """Training diverged: its weights are not finite, and nothing is exported."""


class OutputBusyError(ChromifyError):
    """An output folder is held by another running training, which would replace what this one writes."""

    def __init__(self, folder: str, pid: int | None = None):
        holder = f" (pid {pid})" if pid else ""
        super().__init__(f"{folder}: another training holds this folder{holder}; wait for it to end or train into "
                         "another folder")
        self.folder = folder
        self.pid = pid


def first_line(exc: BaseException) -> str:
    """A foreign exception's message as one line (its type when it has none), to quote inside ours."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]
