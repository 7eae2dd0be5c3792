"""Methods describe themselves (``MethodSpec``): the registry finds them, and the driver, the CLI
and the curves take a new method without naming it."""

from __future__ import annotations

import argparse
import sys
import textwrap

import pytest
import torch

import medfoundry.methods as methods
from medfoundry.config import load_config, preset_methods
from medfoundry.methods import METHODS, STAGE_PLANS, MethodSpec, build_method, method_names
from medfoundry.methods.spec import discover_specs

CLI_ORDER = ["adam", "adam_v2", "moco", "mae", "volume_fusion", "voco"]


def _method_action():
    from medfoundry.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pretrain = sub.choices["pretrain"]
    return pretrain, next(a for a in pretrain._actions if a.dest == "method")


def test_every_preset_method_has_a_spec_and_every_spec_a_preset() -> None:
    assert preset_methods() <= set(method_names())
    for name in method_names():  # the CLI's default preset is the method's name
        assert load_config(name)["method"] == name


def test_registry_is_discovered_from_the_modules_in_the_cli_order() -> None:
    found = discover_specs(methods.__name__, methods.__path__)
    assert sorted(s.name for s in found) == sorted(CLI_ORDER)
    assert list(method_names()) == CLI_ORDER == list(METHODS)
    assert set(STAGE_PLANS) == {"adam_v2"}
    pretrain, action = _method_action()
    assert list(action.choices) == CLI_ORDER
    assert "{" + ",".join(CLI_ORDER) + "}" in pretrain.format_usage().replace("\n", "").replace(
        " ", ""
    )


def test_a_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="stage_plan"):
        MethodSpec("x", 0, factory=lambda b: b, stages="plan")
    with pytest.raises(ValueError, match="data"):
        MethodSpec("x", 0, factory=lambda b: b, data="video")
    assert MethodSpec("x", 0, factory=lambda b: b).section == "x"


FAKE_MODULE = """
from torch import nn

from medfoundry.methods.spec import MethodSpec


class Fake(nn.Module):
    def __init__(self, backbone, scale=1.0):
        super().__init__()
        self.backbone, self.scale = backbone, scale


SPEC = MethodSpec(name="fake_method", order=35, factory=Fake)
"""


@pytest.fixture
def fake_method(tmp_path, monkeypatch):
    """A method in a module outside the package, discovered and registered, then removed."""
    package = tmp_path / "fake_methods_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fake.py").write_text(textwrap.dedent(FAKE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    (spec,) = discover_specs("fake_methods_pkg", [str(package)])
    methods.register_method(spec)
    yield spec
    methods.unregister_method(spec.name)
    for name in ("fake_methods_pkg", "fake_methods_pkg.fake"):
        sys.modules.pop(name, None)


def test_a_registered_method_reaches_build_method_the_cli_and_the_driver(fake_method) -> None:
    from medfoundry.cli import build_parser
    from medfoundry.tasks.pretrain import input_size, selection_rule, training_stages
    from medfoundry.train.curves import panels_for

    backbone = torch.nn.Linear(2, 2)
    model = build_method("fake_method", backbone, scale=2.0)
    assert model.scale == 2.0 and model.method_name == "fake_method"
    assert list(method_names()) == [
        "adam",
        "adam_v2",
        "moco",
        "fake_method",
        "mae",
        "volume_fusion",
        "voco",
    ]
    assert "fake_method" in METHODS
    _, action = _method_action()
    assert "fake_method" in list(action.choices)
    args = build_parser().parse_args(
        ["pretrain", "--method", "fake_method", "--data", "d", "--out", "o"]
    )
    assert args.method == "fake_method"
    cfg = {"method": "fake_method", "epochs": [1, 2], "views": {"out_size": 24}}
    assert [(s.name, s.epochs) for s in training_stages(cfg)] == [("level0", 3)]
    assert input_size(cfg) == 24
    assert selection_rule(cfg, True, False) == ("val/loss", "min")
    # a method that declares no panels: the generic loss panel, none of MoCo's
    log = [{"train/loss_step": [(0, 1.0)], "train/pos_sim_step": [(0, 0.5)]}]
    panels = panels_for(log, "fake_method")
    assert [p.title for p in panels] == ["loss (dots: validation)"]


def test_an_unregistered_method_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown method 'nope'; choose from"):
        build_method("nope", torch.nn.Linear(2, 2))
    from medfoundry.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "nope", "--data", "d", "--out", "o"])
