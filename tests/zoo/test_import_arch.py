"""``import --arch``: a key the format does not take is an error naming the nearest one (it
used to be ignored), a bad value one line, never a traceback."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file

from medfoundry.cli import main
from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.zoo import import_checkpoint


@pytest.fixture
def published(tmp_path):
    """A tiny ResNet-10 state dict in the Adam-v1 layout (torchvision names)."""
    state = create_backbone(name="resnet10", width=0.125).state_dict()
    path = tmp_path / "checkpoint.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_a_misspelled_arch_key_names_the_nearest(published, tmp_path):
    with pytest.raises(CheckpointError, match=r"--arch widht: .* did you mean 'width'\?"):
        import_checkpoint("adam_v1", published, tmp_path / "run", arch={"widht": 0.125})
    assert not (tmp_path / "run").exists()


def test_a_bad_arch_value_is_one_line(published, tmp_path, capsys):
    args = ["import", "--format", "adam_v1", str(published), "--out", str(tmp_path / "run")]
    assert main([*args, "--arch", "name=resnet10", "--arch", "width=wide"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot build the adam_v1 network" in err[0]
