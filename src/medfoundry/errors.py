"""Error types: every user-facing failure names the file and the problem in one line."""

from __future__ import annotations

from pathlib import Path


class MedfoundryError(Exception):
    """Base class for errors the CLI reports as a one-line message with a non-zero exit."""


class InputError(MedfoundryError):
    """Bad input data: unreadable file, wrong shape, NaN values, empty folder, ..."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(MedfoundryError):
    """A checkpoint is missing, malformed, or its weights do not fit the model."""
