"""Each default lives in one layer: the Python defaults tables (what an API caller gets) and the
full-scale YAML presets (what the CLI runs: a preset always overrides the Python default) agree
on every key they share, except the differences listed here with their reason; and the
segmentation presets inherit the training recipe from one base, not from a benchmark."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from medfoundry.benchmarks import eve, hippocampus_fewshot, jsrt_fewshot, kermany_label_efficiency
from medfoundry.config import list_presets, load_config, preset_path
from medfoundry.tasks import segmentation, segmentation3d
from medfoundry.train import segment_module

# (name of the Python table, the table, the full-scale preset) for every benchmark spec and the
# fine-tune tasks. The classification fine-tune has no table (its few fallbacks are inline in
# tasks.classification / train.classify_module): finetune_classification.yaml is its one layer.
TABLES: tuple[tuple[str, Mapping[str, Any], str], ...] = (
    ("jsrt_fewshot.DEFAULT_CONFIG", jsrt_fewshot.DEFAULT_CONFIG, "jsrt_fewshot"),
    (
        "kermany_label_efficiency.DEFAULT_CONFIG",
        kermany_label_efficiency.DEFAULT_CONFIG,
        "kermany_label_efficiency",
    ),
    (
        "hippocampus_fewshot.DEFAULT_CONFIG",
        hippocampus_fewshot.DEFAULT_CONFIG,
        "hippocampus_fewshot",
    ),
    ("segmentation.TRAIN_DEFAULTS", segmentation.TRAIN_DEFAULTS, "finetune_segmentation"),
    ("segmentation.TRAIN_DEFAULTS", segmentation.TRAIN_DEFAULTS, "jsrt_fewshot"),
    ("segment_module.DEFAULTS", segment_module.DEFAULTS, "finetune_segmentation"),
    ("segment_module.DEFAULTS", segment_module.DEFAULTS, "jsrt_fewshot"),
    ("segmentation3d.TRAIN_DEFAULTS", segmentation3d.TRAIN_DEFAULTS, "finetune_segmentation3d"),
)

# (table, preset, dotted key) -> why the two differ on purpose.
KNOWN_DIFFERENCES: dict[tuple[str, str, str], str] = {
    ("jsrt_fewshot.DEFAULT_CONFIG", "jsrt_fewshot", "swin"): (
        "None in Python: an API run trains a Swin-UNet with the general keys unless given a "
        "`swin:` section, and results stored without one resume (tests/benchmarks/"
        "test_jsrt_fewshot.py); the preset holds the Swin-UNet recipe"
    ),
    ("hippocampus_fewshot.DEFAULT_CONFIG", "hippocampus_fewshot", "tune"): (
        "None in Python: an API run (and every benchmark test) trains one lr, no tuning runs; "
        "the preset tunes lr over a grid"
    ),
    ("hippocampus_fewshot.DEFAULT_CONFIG", "hippocampus_fewshot", "foreground_fraction"): (
        "1/3 in Python (segmentation3d.TRAIN_DEFAULTS), 0.3333 in the YAML: the same share to "
        "4 digits; making either exact would change a resolved preset or the fine-tune default"
    ),
    ("segmentation3d.TRAIN_DEFAULTS", "finetune_segmentation3d", "foreground_fraction"): (
        "1/3 in Python, 0.3333 in the YAML (as above)"
    ),
}


def _differences(py: Mapping[str, Any], cfg: Mapping[str, Any], prefix: str = "") -> Iterator:
    """(dotted key, Python value, YAML value) for every shared key whose values differ; a
    section on both sides is compared key by key, a section against a value is one difference."""
    for key in sorted(set(py) & set(cfg)):
        a, b = py[key], cfg[key]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def _shared(py: Mapping[str, Any], cfg: Mapping[str, Any]) -> set[str]:
    return set(py) & set(cfg)


@pytest.mark.parametrize(("table", "py", "preset"), TABLES, ids=[f"{t}-{p}" for t, _, p in TABLES])
def test_python_defaults_agree_with_the_full_scale_preset(table, py, preset):
    cfg = load_config(preset)
    assert len(_shared(py, cfg)) >= 5, f"{table} and {preset} share almost no key"
    found = {key: (a, b) for key, a, b in _differences(py, cfg)}
    unexpected = {k: v for k, v in found.items() if (table, preset, k) not in KNOWN_DIFFERENCES}
    assert not unexpected, f"{table} vs {preset} (Python, YAML): {unexpected}"
    # the list of known differences stays true
    listed = {k for t, p, k in KNOWN_DIFFERENCES if (t, p) == (table, preset)}
    assert listed <= set(found), f"no longer different, drop from KNOWN_DIFFERENCES: {listed}"


def test_eve_has_one_layer_of_defaults():
    """Eve reads every key from its config: the preset is the only layer."""
    assert eve.SPEC.defaults == {}
    assert {"crop_size", "stride", "references", "seed"} <= set(load_config("eve"))


# --- preset inheritance -----------------------------------------------------------------------
RECIPE = "_segmentation_recipe"


def _own(name: str) -> dict[str, Any]:
    return yaml.safe_load(preset_path(name).read_text())


def test_the_2d_segmentation_recipe_is_one_base_of_the_command_and_the_benchmark():
    assert RECIPE not in list_presets()  # a base, not a preset to run
    recipe = load_config(RECIPE)
    for name in ("finetune_segmentation", "jsrt_fewshot"):
        own = _own(name)
        assert own.pop("extends") == RECIPE
        assert not set(own) & set(recipe), f"{name} overrides recipe keys {set(own) & set(recipe)}"
        cfg = load_config(name)
        assert {k: cfg[k] for k in recipe} == recipe
    # the benchmark holds its protocol, not the command's keys
    jsrt = load_config("jsrt_fewshot")
    assert "val_fraction" not in jsrt and "seed" not in jsrt
    assert jsrt["structures"] == list(jsrt_fewshot.JSRT_STRUCTURES)
    assert load_config("finetune_segmentation")["structures"] is None


def test_no_general_preset_extends_a_benchmark():
    benchmarks = {"jsrt_fewshot", "kermany_label_efficiency", "hippocampus_fewshot", "eve"}
    for name in list_presets():
        base = _own(name).get("extends")
        if base in benchmarks:
            assert name == f"{base}_cpu", f"{name} extends the benchmark {base}"
