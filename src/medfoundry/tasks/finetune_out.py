"""The `--out` folder of `medfoundry finetune` (2D and 3D): what a finished run holds, and
the check that keeps a finished run from being replaced by accident."""

from __future__ import annotations

from pathlib import Path

from medfoundry.errors import MedfoundryError
from medfoundry.runtime import check_run_dir
from medfoundry.zoo.meta import Checkpoint

#: What a finished fine-tuning run holds, its completion marker first (``metrics.json`` is
#: written last); ``--overwrite`` deletes these (``runtime.clear_outputs``) once the inputs are
#: checked, before the new run writes anything.
RUN_OUTPUTS = ("metrics.json", "checkpoint", "cases.csv")


def check_finetune_out(out_dir: str | Path, pretrained: Checkpoint | None, overwrite: bool) -> bool:
    """Refuse a finished run in ``out_dir`` unless ``overwrite``, and always an ``out_dir``
    whose checkpoint is ``pretrained`` itself; returns whether it holds a finished run."""
    out_dir = Path(out_dir)
    if pretrained is not None and pretrained.folder.resolve() == (out_dir / "checkpoint").resolve():
        raise MedfoundryError(
            f"{out_dir}: --out holds the --pretrained checkpoint itself; choose a new --out"
        )
    return check_run_dir(out_dir, RUN_OUTPUTS, overwrite, "a finished fine-tuning run")
