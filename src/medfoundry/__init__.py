"""medfoundry: make and use foundation models for medical imaging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medfoundry.tasks.predict import predict

__version__ = "0.1.0"
__all__ = ["__version__", "predict"]


def __getattr__(name: str) -> Any:
    """``medfoundry.predict`` (``tasks.predict.predict``), imported on first use (torch)."""
    if name == "predict":
        from medfoundry.tasks.predict import predict

        return predict
    raise AttributeError(f"module 'medfoundry' has no attribute {name!r}")
