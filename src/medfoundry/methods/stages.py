"""Pretraining stages: what the driver trains in sequence, each stage warm-started from the last.

A method that trains in stages declares them (a function from the config to a list of
``Stage``s, registered in ``methods.STAGE_PLANS``); the driver asks for them instead of naming
the method. Each stage is one Lightning fit with its own schedules and folder
(``stage{i}_{name}``); within a stage the method's level may change from epoch to epoch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: its folder name, the method's level in each of its epochs, its mode.

    Attributes:
        name: folder suffix (``stage{i}_{name}``): Adam-v1 ``level2``, Adam-v2 ``L``/``LCD``.
        levels: the level (``set_level``) of each epoch; its length is the stage's epochs.
        mode: the method's training mode during the stage (``set_mode``), or None.
    """

    name: str
    levels: tuple[int, ...]
    mode: str | None = None

    @property
    def epochs(self) -> int:
        """Number of epochs of the stage."""
        return len(self.levels)

    def distinct_levels(self) -> tuple[int, ...]:
        """The levels trained, in order of first appearance (what checkpoint metadata lists)."""
        return tuple(dict.fromkeys(self.levels))
