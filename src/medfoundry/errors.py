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


class Interrupted(BaseException):  # noqa: N818 - a stop, like KeyboardInterrupt, not an error
    """A run stopped by SIGTERM or Ctrl-C (SIGINT); the CLI exits 128 + the signal number.

    A ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` swallows it.
    ``run_dir`` is the run folder that ``--resume`` continues, when there is one.
    """

    def __init__(self, signum: int, run_dir: str | Path | None = None) -> None:
        self.signum = int(signum)
        self.run_dir = None if run_dir is None else Path(run_dir)
        super().__init__(f"interrupted by signal {self.signum}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 143 (SIGTERM), 130 (SIGINT)."""
        return 128 + self.signum
