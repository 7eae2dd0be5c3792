"""Config keys and values are checked when the config is resolved: a misspelled ``--set`` key
is an error suggesting the nearest known key, a bad value one line naming the key; every
``--set`` in the docs, README and tests still resolves; the list of optional keys matches the
code (constructor arguments, defaults tables, the keys the pretraining driver reads)."""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

import medfoundry
from medfoundry import config as config_module
from medfoundry.cli import main
from medfoundry.config import (
    BACKBONE_ARGS,
    OPTIONAL_KEYS,
    _KnownKeys,
    apply_overrides,
    config_family,
    list_presets,
    load_config,
    validate_config,
)
from medfoundry.errors import MedfoundryError

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(medfoundry.__file__).resolve().parent


# --- unknown keys -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "pair", "suggestion"),
    [
        ("adam", "optim.lrr=0.1", "optim.lr"),
        ("finetune_classification", "val_evry=3", "val_every"),
        ("adam_cpu", "moco.proj_nb=true", "moco.proj_bn"),
        ("adam", "trainer.precison=bf16-mixed", "trainer.precision"),
        ("adam", "backbone.widht=0.5", "backbone.width"),
        ("finetune_segmentation3d", "sliding_window.overlapp=0.25", "sliding_window.overlap"),
        ("jsrt_fewshot", "swin.lrr=1e-3", "swin.lr"),
    ],
)
def test_a_misspelled_key_is_an_error_suggesting_the_nearest(preset, pair, suggestion):
    with pytest.raises(MedfoundryError, match="unknown config key") as err:
        apply_overrides(load_config(preset), [pair])
    message = str(err.value)
    assert f"--set {pair.split('=')[0]}:" in message and f"did you mean {suggestion!r}" in message
    assert "\n" not in message


def test_another_methods_section_is_not_known():
    with pytest.raises(MedfoundryError, match="'mae' section is read by method mae"):
        apply_overrides(load_config("adam"), ["mae.mask_ratio=0.5"])


@pytest.mark.parametrize(
    ("preset", "pairs"),
    [
        # optional keys no preset sets (read with a default by the code)
        ("adam", ["moco.proj_bn=true", "moco.momentum_end=1.0", "moco.symmetric=true"]),
        ("moco", ["selection.monitor=val/loss", "selection.mode=min", "probe.per_class=50"]),
        ("adam_cpu", ["views.augment.blur_p=0.0", "guard.representation_warmup=100"]),
        ("mae_cpu", ["mae.decoder_depths=[1, 1, 1]", "optim.warmup_steps=10"]),
        ("voco", ["voco.crop_depth=16", "voco.augment.flip_p=0.0"]),
        ("volume_fusion", ["volume_fusion.fusion.size=[0.1, 0.3]", "normalization.name=none"]),
        ("finetune_segmentation3d", ["head_init=zero", "sliding_window.amp=true"]),
        ("hippocampus_fewshot", ["head_init=zero", "load_decoder=false", "unet.dropout=0.1"]),
        ("finetune_classification", ["accelerator=cpu", "precision=bf16-mixed", "devices=1"]),
        ("finetune_segmentation", ["grad_clip=1.0", "layer_decay=0.75", "bce_weight=0.5"]),
        # a dict value: its keys are checked too
        ("voco", ["voco={num_base: 2, proj_hidden: 32, proj_dim: 16}"]),
        ("volume_fusion", ["trainer={accelerator: cpu, devices: 1}"]),
        # the free maps and the Swin recipe
        ("jsrt_fewshot", ["tune.lr=[1e-3]", "swin.tune=null", "swin.grad_clip=0.5"]),
        ("kermany_label_efficiency", ["tune.linear_probe=[1e-4, 1e-3]", "lr.finetune=3e-3"]),
    ],
)
def test_known_and_optional_keys_resolve(preset, pairs):
    apply_overrides(load_config(preset), pairs)


def test_a_null_level_becomes_a_section_and_a_value_is_not_one():
    cfg = apply_overrides(load_config("jsrt_fewshot"), ["tune.lr=[1e-3, 3e-3]"])
    assert cfg["tune"] == {"lr": [1e-3, 3e-3]}  # `1e-3` (text to YAML 1.1) is the number
    with pytest.raises(MedfoundryError, match="optim is a section"):
        apply_overrides(load_config("adam"), ["optim=3"])
    with pytest.raises(MedfoundryError, match="unknown config key"):
        apply_overrides(load_config("adam"), ["optim.lr.x=3"])


def test_a_users_yaml_file_with_a_misspelled_key_fails_when_loaded(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: adam_cpu\noptim: {lr: 0.1, batch_sise: 8}\n")
    with pytest.raises(MedfoundryError, match=r"mine.yaml: optim.batch_sise: unknown config key"):
        load_config(path)
    path.write_text("extends: adam_cpu\noptim: {lr: 0.1, batch_size: 8}\nmoco: {proj_bn: false}\n")
    assert load_config(path)["optim"]["batch_size"] == 8


# --- values -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "pair", "pattern"),
    [
        ("adam", "optim.lr=abc", r"--set optim.lr='abc': not a number \(the config has 0.03\)"),
        ("adam", "optim.batch_size=0", r"optim.batch_size: 0 is not a positive integer"),
        ("adam", "optim.batch_size=-4", r"optim.batch_size: -4 is not a positive integer"),
        ("adam", "epochs=0", r"epochs: 0 is not a positive integer"),
        ("adam_cpu", "epochs=[0, 0, 0]", r"epochs: \[0, 0, 0\] is not a positive integer"),
        ("adam_cpu", "epochs=[8, -1, 3]", r"epochs: \[8, -1, 3\] is not a positive integer"),
        ("adam", "data.val_fraction=1.5", r"data.val_fraction: 1.5 is not a fraction"),
        ("finetune_classification", "steps=0", r"steps: 0 is not a positive integer"),
        ("finetune_classification", "linear_probe=ture", r"not true or false"),
        ("kermany_label_efficiency", "lr.finetune=-1", r"lr: .* is not a positive number"),
        ("jsrt_fewshot_cpu", "swin.steps=0", r"swin.steps: 0 is not a positive integer"),
        ("jsrt_fewshot", "tune.lr=[0.001, abc]", r"tune.lr: .* is not a list of positive"),
        ("finetune_segmentation3d", "patch_size=[0, 32, 32]", r"patch_size: .* is not 3 pos"),
        ("finetune_classification", "labels_per_class=0", r"labels_per_class: 0 is not a"),
        ("jsrt_fewshot", "shots=[3, 0]", r"shots: \[3, 0\] is not a list of positive integers"),
        ("voco", "data.crop_size=[32, 64]", r"data.crop_size: \[32, 64\] is not 3 positive"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(preset, pair, pattern):
    with pytest.raises(MedfoundryError, match=pattern) as err:
        apply_overrides(load_config(preset), [pair])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--batch-size", "-1"], ["--epochs", "0"]])
def test_cli_refuses_bad_flag_values_before_any_work(tmp_path, capsys, monkeypatch, argv):
    import medfoundry.tasks.pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "pretrain", _never_called)
    args = ["pretrain", "--method", "moco", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main([*args, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("optim.batch_size" in err[0] or "epochs" in err[0])
    assert not (tmp_path / "r").exists()


def _never_called(*args, **kwargs):
    raise AssertionError("the command started although its config is invalid")


@pytest.mark.parametrize("preset", list_presets())
def test_every_shipped_preset_is_valid(preset):
    validate_config(load_config(preset))


# --- every --set in the docs, README, tests and benchmarks still resolves ----------------------
def _documented_commands() -> list[list[str]]:
    """``medfoundry ...`` command lines with a ``--set`` in README.md and docs/ (every .md below it)."""
    commands = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            if "--set" not in line or "medfoundry " not in line:
                continue
            line = line.split(" # ")[0].split("  #")[0].strip()
            start = line.index("medfoundry ")
            command = line[start:]
            words = shlex.split(
                command.removesuffix('"') if line[:start].endswith('="') else command
            )
            if line[:start].endswith('="'):  # B="medfoundry ...": the rest is added where used
                words += ["--pretrained", "none", "--out", "runs/x"]
            if words[1] in ("pretrain", "finetune", "benchmark"):
                commands.append(words[1:])
    return commands


def _inline_sets() -> list[tuple[str, list[str]]]:
    """``--set`` pairs quoted in the prose, with the preset of their context."""
    return [
        ("moco", ["selection.monitor=val/loss", "selection.mode=min"]),  # representation.md
        ("jsrt_fewshot_cpu", ["swin.tune=null", "swin.lr=1.0e-3", "swin.steps=1200"]),
        ("kermany_label_efficiency_cpu", ["tune.linear_probe=[1e-4, 3e-4, 1e-3]"]),
        ("adam", ["trainer.loggers=[csv, tensorboard]"]),  # README
    ]


def test_documented_commands_resolve_their_config(monkeypatch, capsys):
    captured = _capture_commands(monkeypatch)
    commands = _documented_commands()
    assert len(commands) >= 10
    for argv in commands:
        captured.clear()
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        assert len(captured) == 1
    for preset, pairs in _inline_sets():
        apply_overrides(load_config(preset), pairs)


def _capture_commands(monkeypatch) -> list[dict]:
    """Replace every command's work by recording its resolved config."""
    import medfoundry.benchmarks.engine as engine
    import medfoundry.tasks.finetune as finetune
    import medfoundry.tasks.pretrain as pretrain
    import medfoundry.zoo.meta as meta

    captured: list[dict] = []

    def record(*args, **kwargs):
        cfg = next(a for a in [*args, *kwargs.values()] if isinstance(a, dict))
        captured.append(cfg)
        return Path("run")

    monkeypatch.setattr(pretrain, "pretrain", lambda cfg, *a, **k: record(cfg))
    for module, name in (
        (finetune, "finetune_classification"),
        (finetune, "finetune_segmentation"),
        (engine, "run_benchmark"),
    ):
        monkeypatch.setattr(module, name, record)
    monkeypatch.setattr(finetune, "is_3d_segmentation", lambda data, pre: "hippo" in str(data))
    monkeypatch.setattr(meta, "resolve_checkpoint", lambda path: path)
    return captured


def _override_keys(path: Path) -> set[str]:
    """The keys of the ``"key=value"`` strings in a Python file's lists and tuples (``--set``
    pairs, ``apply_overrides`` lists), except ``--arch`` pairs (import arguments)."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.List | ast.Tuple):
            continue
        previous = None
        for item in node.elts:
            text = item.value if isinstance(item, ast.Constant) else None
            if isinstance(text, str) and previous != "--arch":
                match = re.fullmatch(r"([a-z_][a-z0-9_.]*)=.*", text, re.S)
                if match:
                    keys.add(match.group(1))
            previous = text
    return keys


def test_every_set_in_the_tests_and_benchmarks_names_a_known_key():
    """The ``--set`` pairs and ``apply_overrides`` lists of the test suite and perf/."""
    keys = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "perf").glob("*.py")]:
        if path.name != Path(__file__).name:
            keys |= _override_keys(path)
    known = [_KnownKeys(load_config(p)) for p in list_presets()]
    unknown = sorted(k for k in keys if not any(kk.known(k) for kk in known))
    assert not unknown, f"--set keys in the tests that no preset family knows: {unknown}"


# --- the optional keys match the code -----------------------------------------------------------
def test_backbone_args_are_the_registered_backbones_arguments():
    from medfoundry.nets.factory import backbone_arguments, backbone_names

    args = {a for name in backbone_names() for a in backbone_arguments(name)}
    assert set(BACKBONE_ARGS) == args


def test_augment_and_fusion_fields_are_the_dataclasses_fields():
    from medfoundry.methods.voco import VoCoAugment
    from medfoundry.pretext.anatomy import AnatomyAugment
    from medfoundry.pretext.volume_fusion import FusionConfig

    for names, cls in (
        (config_module._ANATOMY_AUGMENT, AnatomyAugment),
        (config_module._VOCO_AUGMENT, VoCoAugment),
        (config_module._FUSION, FusionConfig),
    ):
        assert set(names) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def _method_parameters() -> dict[str, set[str]]:
    import inspect

    from medfoundry.methods import MaskedAutoencoder, MoCo, VoCo, VolumeFusion
    from medfoundry.methods.volume_fusion import build_volume_fusion as _build_volume_fusion

    def params(fn) -> set[str]:
        return set(inspect.signature(fn).parameters) - {"self", "backbone", "segmenter", "kwargs"}

    driver = {"level", "out_size", "augment"}  # MoCo: set by the driver from levels / views
    return {
        "moco": params(MoCo.__init__) - driver,
        "mae": params(MaskedAutoencoder.__init__),
        "voco": params(VoCo.__init__),
        "volume_fusion": params(VolumeFusion.__init__) | params(_build_volume_fusion),
    }


def _pretrain_known(key: str) -> bool:
    return any(
        _KnownKeys(cfg).known(key)
        for cfg in map(load_config, list_presets())
        if config_family(cfg) == "pretrain"
    )


def test_every_method_argument_is_a_known_key():
    unknown = sorted(
        f"{section}.{name}"
        for section, names in _method_parameters().items()
        for name in names
        if not _pretrain_known(f"{section}.{name}")
    )
    assert not unknown, f"add these to config.OPTIONAL_KEYS['pretrain']: {unknown}"


# (file, variable, section) of the config reads in the pretraining driver
PRETRAIN_READS = (
    ("tasks/pretrain.py", "guard", "guard"),
    ("tasks/pretrain.py", "sel", "selection"),
    ("tasks/pretrain.py", "pcfg", "probe"),
    ("tasks/pretrain.py", "tcfg", "trainer"),
    ("tasks/pretrain.py", r'cfg\["data"\]', "data"),
    ("tasks/pretrain.py", r'cfg\["views"\]', "views"),
    ("tasks/pretrain.py", "cfg", ""),
    ("train/pretrain_module.py", "optim", "optim"),
    ("train/pretrain_module.py", "cfg", "optim"),
)


def test_every_key_the_pretraining_driver_reads_is_known():
    unknown = set()
    for file, var, section in PRETRAIN_READS:
        text = (SRC / file).read_text()
        names = re.findall(rf'\b{var}(?:\.get\(\s*|\[)"(\w+)"', text)
        for name in names:
            key = f"{section}.{name}" if section else name
            if not _pretrain_known(key):
                unknown.add(f"{key} ({file})")
    assert not unknown, f"add these to config.OPTIONAL_KEYS['pretrain']: {sorted(unknown)}"


def _paths(d: dict, prefix: str = "") -> set[str]:
    return config_module._paths(d, prefix)


def test_every_downstream_default_is_a_known_key():
    from medfoundry.benchmarks import hippocampus_fewshot, jsrt_fewshot, kermany_label_efficiency
    from medfoundry.tasks import segmentation, segmentation3d
    from medfoundry.train import segment_module

    known = [
        _KnownKeys(cfg)
        for cfg in map(load_config, list_presets())
        if config_family(cfg) == "downstream"
    ]
    tables = {
        "jsrt_fewshot.DEFAULT_CONFIG": jsrt_fewshot.DEFAULT_CONFIG,
        "kermany_label_efficiency.DEFAULT_CONFIG": kermany_label_efficiency.DEFAULT_CONFIG,
        "hippocampus_fewshot.DEFAULT_CONFIG": hippocampus_fewshot.DEFAULT_CONFIG,
        "segmentation.TRAIN_DEFAULTS": segmentation.TRAIN_DEFAULTS,
        "segment_module.DEFAULTS": segment_module.DEFAULTS,
        "segmentation3d.TRAIN_DEFAULTS": segmentation3d.TRAIN_DEFAULTS,
    }
    unknown = sorted(
        f"{key} ({name})"
        for name, table in tables.items()
        for key in _paths(table)
        if not any(k.known(key) for k in known)
    )
    assert not unknown, f"add these to config.OPTIONAL_KEYS['downstream']: {unknown}"


def test_every_optional_key_is_read_somewhere_in_the_code():
    """No entry outlives the code that read it: each key's last part is a name in the source."""
    source = " ".join(p.read_text() for p in SRC.rglob("*.py") if p.name != "config.py")
    words = set(re.findall(r"\w+", source))
    stale = sorted(
        key
        for keys in OPTIONAL_KEYS.values()
        for key in keys
        if key.rstrip(".*").rpartition(".")[2] not in words
    )
    assert not stale, f"optional keys no code reads: {stale}"
