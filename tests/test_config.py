"""Presets, inheritance and overrides."""

from __future__ import annotations

import pytest

from medfoundry.config import apply_overrides, list_presets, load_config
from medfoundry.errors import MedfoundryError


def test_presets_exist_and_moco_extends_adam():
    assert {"adam", "moco", "demo"} <= set(list_presets())
    adam, moco = load_config("adam"), load_config("moco")
    assert moco["method"] == "moco" and moco["levels"] == [0]
    assert moco["moco"]["prune_threshold"] is None
    assert moco["moco"]["queue_size"] == adam["moco"]["queue_size"] == 65536
    assert adam["moco"]["temperature"] == 0.2 and adam["levels"] == [0, 2, 4]


def test_overrides_parse_yaml_values():
    cfg = apply_overrides(
        load_config("adam"), ["optim.lr=0.1", "levels=[0,2]", "backbone.name=resnet18"]
    )
    assert (
        cfg["optim"]["lr"] == 0.1
        and cfg["levels"] == [0, 2]
        and cfg["backbone"]["name"] == "resnet18"
    )
    with pytest.raises(MedfoundryError):
        apply_overrides(cfg, ["no_equals_sign"])


def test_unknown_preset_names_choices(tmp_path):
    with pytest.raises(MedfoundryError, match="presets"):
        load_config("does_not_exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(MedfoundryError, match="mapping"):
        load_config(bad)
