"""YAML presets and overrides: one dict per run, every CLI flag maps to one (dotted) key.

Rules of a resolved config (``apply_overrides``, which every command calls last, checks them):

- **Known keys**: a ``--set`` key (and each key of a user's YAML file, ``load_config``) must be
  known, else a ``MedfoundryError`` names it and the nearest known key (a misspelled key is not
  ignored while the run goes on with the default). Known is: a key of the config being
  overridden, a key of any shipped preset of the same family (``config_family``: pretraining
  presets have a ``method``, the downstream ones are fine-tuning and benchmarks), or one of
  ``OPTIONAL_KEYS`` (read by the code with a default, set by no preset). In the downstream
  family ``swin.<key>`` is known when ``<key>`` is (the Swin-UNet recipe replaces any key).
- **Values**: ``VALUE_RULES`` checks the values every command relies on (sizes, counts, rates,
  fractions) once, here, so ``--set optim.lr=abc`` or ``--batch-size 0`` is one line naming
  the key and the value instead of a traceback (or a misleading message) later; a value that
  replaces a number, or a bool, must be one too.
- **Values are YAML**: ``key=value`` parses ``value`` as YAML (numbers, lists, null, mappings);
  ``1e-3`` (YAML 1.1 reads it as text) is taken as the number it means.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medfoundry.errors import MedfoundryError

#: Every argument some registered backbone takes (``nets.factory.backbone_arguments``; a
#: test keeps the two equal): the keys a ``backbone`` section may hold.
BACKBONE_ARGS: tuple[str, ...] = (
    "depths",
    "down_preact",
    "drop_path",
    "dropout",
    "embed_dim",
    "feature_channels",
    "feature_size",
    "final_norm",
    "in_channels",
    "mlp_ratio",
    "name",
    "num_heads",
    "patch_size",
    "qkv_bias",
    "resolution_mode",
    "spatial_dims",
    "use_checkpoint",
    "use_v2",
    "width",
    "window_size",
)

# The fields of the view / crop augmentations and of Volume Fusion's block sampling
# (``pretext.anatomy.AnatomyAugment``, ``methods.voco.VoCoAugment``,
# ``pretext.volume_fusion.FusionConfig``; a test keeps them equal).
_ANATOMY_AUGMENT = (
    "antialias",
    "black_level",
    "blur_p",
    "blur_sigma",
    "brightness",
    "clip",
    "contrast",
    "jitter_p",
    "padding",
    "ratio",
    "rotation",
    "scale",
)
_VOCO_AUGMENT = ("flip_p", "rot90_p", "shift", "shift_p")
_FUSION = ("depth", "num_blocks", "num_classes_fg", "size")


def _under(prefix: str, names: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n in names)


#: Keys the code reads with a default that no shipped preset sets, per family. An entry
#: ending in ``.*`` takes any key below it (a free map, e.g. MONAI network arguments).
#: ``tests/test_config_keys.py`` checks the entries against the code (constructor arguments,
#: the defaults tables of the downstream tasks, the keys the pretraining driver reads).
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "pretrain": (
        *_under("backbone", BACKBONE_ARGS),
        "normalization",  # the 2D intensity spec (default: the X-ray one)
        "normalization.*",
        "selection",  # which checkpoint is "best": tasks.pretrain.selection_rule
        "selection.monitor",
        "selection.mode",
        "probe",  # the online kNN probe on labeled 2D class folders
        "probe.data",
        "probe.per_class",
        "guard.max_mean_length",
        "guard.representation_patience",
        "guard.representation_warmup",
        "guard.retrieval_chance_factor",
        "optim.exclude_norm_bias",
        "optim.grad_clip",  # train.pretrain_module: DINO / Adam-v2 options, off by default
        "optim.grad_clip_mode",
        "optim.min_lr",
        "optim.warmup_steps",
        "optim.weight_decay_end",
        "trainer.checkpoint_every_n_steps",  # last.ckpt also every N steps (0: epochs only)
        "views.augment",
        *_under("views.augment", _ANATOMY_AUGMENT),
        # method constructor arguments (methods/): MoCo / Adam, MAE, VoCo, Volume Fusion
        "moco.bn_splits",
        "moco.momentum_end",
        "moco.symmetric",
        "mae.decoder_depths",
        "mae.decoder_drop_path",
        "mae.decoder_heads",
        "mae.val_seed",
        "voco.augment",
        *_under("voco.augment", _VOCO_AUGMENT),
        "voco.crop_depth",
        "voco.crop_size",
        "voco.multi_scale",
        "voco.reg_weight",
        "voco.val_seed",
        "volume_fusion.ce_weight",
        "volume_fusion.dice_weight",
        "volume_fusion.val_seed",
        *_under("volume_fusion.fusion", _FUSION),
    ),
    "downstream": (
        *_under("backbone", BACKBONE_ARGS),
        *_under("resnet_unet.backbone", BACKBONE_ARGS),
        *_under("pctnet.backbone", BACKBONE_ARGS),
        "normalization.*",
        "unet.*",  # MONAI BasicUNet arguments
        "swinunetr.*",  # MONAI SwinUNETR arguments
        "bce_weight",  # train.segment_module.DEFAULTS
        "grad_clip",
        "layer_decay",
        "min_lr_ratio",
        "devices",
        "sliding_window.amp",
    ),
    "demo": (),
}


def preset_path(name: str) -> Path:
    """Path of a packaged preset (`adam`, `jsrt_fewshot_cpu`, ...)."""
    return Path(str(resources.files("medfoundry") / "configs" / f"{name}.yaml"))


def _presets_folder() -> Path:
    return Path(str(resources.files("medfoundry") / "configs"))


def list_presets() -> list[str]:
    """The presets a user runs; a file whose name starts with ``_`` is a base that presets
    extend (``_segmentation_recipe``), loadable by name but not listed."""
    return sorted(p.stem for p in _presets_folder().glob("*.yaml") if not p.stem.startswith("_"))


def _read_yaml(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping (its ``extends`` not yet applied)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MedfoundryError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MedfoundryError(f"{path}: unreadable config file ({exc})") from exc
    if not isinstance(data, dict):
        raise MedfoundryError(f"{path}: a config must be a mapping of keys to values")
    return data


def _load(name_or_path: str | Path) -> dict[str, Any]:
    """A preset or YAML file with its ``extends`` chain merged (no key check)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_path(str(name_or_path))
    if not path.is_file():
        raise MedfoundryError(
            f"{name_or_path}: no such config file or preset (presets: {', '.join(list_presets())})"
        )
    data = _read_yaml(path)
    base = data.pop("extends", None)
    return merge(_load(base), data) if base else data


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """Load a preset by packaged name or a YAML file path; a user's file (not a packaged
    preset) may hold only known keys (module doc), so a misspelled key fails here."""
    cfg = _load(name_or_path)
    path = Path(name_or_path)
    if path.suffix and path.resolve().parent != _presets_folder().resolve():
        own = _read_yaml(path)
        base = own.pop("extends", None)
        known = _KnownKeys(cfg, _load(base) if base else {})
        for key in sorted(_paths(own)):
            known.check(key, f"{path}:")
    return cfg


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed (a null level becomes a
    mapping; a level holding a value is an error naming the key)."""
    parts = key.split(".")
    if not all(parts):
        raise MedfoundryError(f"{key}: not a config key (empty part between dots)")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise MedfoundryError(f"{key}: {where} is {node!r}, not a section with keys")
    node[parts[-1]] = value


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _numbers(value: Any) -> Any:
    """``value`` with every ``1e-3``-like text (YAML 1.1 needs ``1.0e-3``) as a float."""
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse_value(raw: str) -> Any:
    """A ``--set`` value: YAML, with ``1e-3`` (text to YAML 1.1) read as the number."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise MedfoundryError(f"{raw!r}: not a YAML value ({' '.join(str(exc).split())})") from exc
    return _numbers(value)


def apply_overrides(cfg: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings (value parsed as YAML: numbers, lists, null) to a copy of cfg;
    every key must be known and the result's values valid (module doc)."""
    out = copy.deepcopy(cfg)
    known = _KnownKeys(cfg)
    for pair in pairs:
        if "=" not in pair:
            raise MedfoundryError(f"override {pair!r} must look like key=value")
        key, raw = (s.strip() for s in pair.split("=", 1))
        value = parse_value(raw)
        known.check(key, "--set")
        if isinstance(value, dict):
            for sub in sorted(_paths(value)):
                known.check(f"{key}.{sub}", "--set")
        _check_replacement(key, _get(out, key), value)
        set_dotted(out, key, value)
    validate_config(out)
    return out


# --- known keys -------------------------------------------------------------------------------
def config_family(cfg: Mapping[str, Any]) -> str:
    """``pretrain`` (a ``method``), ``demo`` (a ``pretrain_preset``) or ``downstream``."""
    if "method" in cfg:
        return "pretrain"
    return "demo" if "pretrain_preset" in cfg else "downstream"


def _paths(cfg: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key of a nested mapping (sections and leaves)."""
    out: set[str] = set()
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        out.add(path)
        if isinstance(value, Mapping):
            out |= _paths(value, f"{path}.")
    return out


@cache
def _shipped() -> tuple[dict[str, Any], ...]:
    """Every shipped preset, resolved (read once per process)."""
    return tuple(_load(name) for name in list_presets())


def preset_keys(family: str) -> frozenset[str]:
    """The dotted keys of every shipped preset of ``family``."""
    keys: set[str] = set()
    for cfg in _shipped():
        if config_family(cfg) == family:
            keys |= _paths(cfg)
    return frozenset(keys)


def preset_methods() -> frozenset[str]:
    """The pretraining methods of the shipped presets (each may have a section of its name)."""
    return frozenset(str(c["method"]) for c in _shipped() if config_family(c) == "pretrain")


class _KnownKeys:
    """The keys a config of one family may set (module doc), with nearest-key suggestions:
    those of ``base`` (default: ``cfg`` itself), of the family's presets, and optional ones."""

    def __init__(self, cfg: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> None:
        self.family = config_family(cfg)
        optional = OPTIONAL_KEYS.get(self.family, ())
        self.patterns = tuple(k[:-2] for k in optional if k.endswith(".*"))
        self.keys = _paths(cfg if base is None else base) | preset_keys(self.family)
        self.keys |= {k for k in optional if not k.endswith(".*")} | set(self.patterns)
        self.method = str(cfg.get("method"))
        # another method's section (``mae.*`` in an Adam config) would be ignored: not known
        self.foreign = set()
        if self.family == "pretrain":
            self.foreign = set(preset_methods()) - set(cfg) - {self.method}

    def known(self, key: str) -> bool:
        if key.split(".")[0] in self.foreign:
            return False
        if key in self.keys or any(key.startswith(f"{p}.") for p in self.patterns):
            return True
        if self.family == "downstream" and key.startswith("swin."):
            return self.known(key[len("swin.") :])
        return False

    def check(self, key: str, what: str) -> None:
        """Raise a ``MedfoundryError`` naming an unknown ``key`` and the nearest known one."""
        if self.known(key):
            return
        section = key.split(".")[0]
        if section in self.foreign:
            raise MedfoundryError(
                f"{what} {key}: the {section!r} section is read by method {section}, and this "
                f"config's method is {self.method} (it would be ignored)"
            )
        parent = key.rpartition(".")[0]
        siblings = sorted(k for k in self.keys if k.rpartition(".")[0] == parent)
        near = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or (
            difflib.get_close_matches(key, sorted(self.keys), n=1, cutoff=0.6)
        )
        hint = f"; did you mean {near[0]!r}?" if near else ""
        shown = ", ".join(siblings[:12]) + (", ..." if len(siblings) > 12 else "")
        under = f" (keys under {parent!r}: {shown})" if parent and siblings else ""
        raise MedfoundryError(f"{what} {key}: unknown config key{hint}{under}")


# --- values -----------------------------------------------------------------------------------
def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_replacement(key: str, old: Any, new: Any) -> None:
    """Text must not replace a number or a bool, nor a value a section (null always may; a
    section may also become true / false, as ``augment`` does)."""
    if old is None or new is None:
        return
    if _is_number(old) and isinstance(new, str):
        raise MedfoundryError(f"--set {key}={new!r}: not a number (the config has {old!r})")
    if isinstance(old, bool) and isinstance(new, str):
        raise MedfoundryError(f"--set {key}={new!r}: not true or false (the config has {old})")
    if isinstance(old, dict) and not isinstance(new, dict | bool):
        keys = ", ".join(sorted(old)[:8])
        raise MedfoundryError(
            f"--set {key}={new!r}: {key} is a section ({keys}); set one of its keys, "
            f"e.g. --set {key}.{sorted(old)[0] if old else 'KEY'}=..."
        )


Check = Callable[[Any], bool]


def _int_at_least(low: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number_above(low: float, inclusive: bool = False) -> Check:
    def check(v: Any) -> bool:
        return _is_number(v) and math.isfinite(v) and (v >= low if inclusive else v > low)

    return check


def _fraction(v: Any) -> bool:
    return _is_number(v) and 0.0 <= v < 1.0


def _unit(v: Any) -> bool:
    return _is_number(v) and 0.0 <= v <= 1.0


def _or_null(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _each(check: Check) -> Check:
    """An int / number or a list of them (``epochs: [8, 4, 3]``)."""
    return lambda v: check(v) or (isinstance(v, list) and bool(v) and all(map(check, v)))


def _values_of(check: Check) -> Check:
    """A value or a mapping of them (``lr: {finetune: 1e-3, linear_probe: 1e-2}``)."""
    return lambda v: check(v) or (isinstance(v, dict) and all(map(check, v.values())))


def _epochs(value: Any) -> int:
    """The total of an ``epochs`` value (an int, a list per level, or a mapping of those per
    stage, as Adam-v2 has), each entry >= 0; -1 when it is not one."""
    if isinstance(value, dict):
        parts = [_epochs(v) for v in value.values()]
    elif isinstance(value, list):
        parts = [int(v) if _int_at_least(0)(v) else -1 for v in value]
    else:
        return int(value) if _int_at_least(0)(value) else -1
    return -1 if not parts or min(parts) < 0 else sum(parts)


def _sides(n: int | None) -> Check:
    """A non-empty list of positive integers (of length ``n`` when given)."""
    positive = _int_at_least(1)
    return lambda v: (
        isinstance(v, list) and bool(v) and (n is None or len(v) == n) and all(map(positive, v))
    )


_POSITIVE_INT = (_int_at_least(1), "a positive integer")
_COUNT = (_int_at_least(0), "an integer >= 0")
_RATE = (_values_of(_number_above(0.0)), "a positive number")
_DECAY = (_number_above(0.0, inclusive=True), "a number >= 0")

#: (key pattern, check, what it must be): the values the commands rely on. A pattern matches
#: the key itself and (``swin.``) the Swin-UNet recipe's copy of it.
VALUE_RULES: tuple[tuple[str, Check, str], ...] = (
    ("epochs", lambda v: _epochs(v) >= 1, "a positive integer (or >= 0 per level, not all 0)"),
    ("optim.batch_size", *_POSITIVE_INT),
    ("batch_size", *_POSITIVE_INT),
    ("eval_batch_size", *_POSITIVE_INT),
    ("steps", *_POSITIVE_INT),
    ("max_steps", _or_null(_int_at_least(1)), "a positive integer or null"),
    ("val_every", *_POSITIVE_INT),
    ("val_checks", *_POSITIVE_INT),
    ("repeats", *_POSITIVE_INT),
    ("data.load_size", *_POSITIVE_INT),
    ("views.out_size", *_POSITIVE_INT),
    ("image_size", _or_null(_int_at_least(1)), "a positive integer or null"),
    ("default_image_size", *_POSITIVE_INT),
    ("moco.queue_size", *_POSITIVE_INT),
    ("trainer.checkpoint_every_n_steps", *_COUNT),
    ("data.num_workers", *_COUNT),
    ("num_workers", *_COUNT),
    ("seed", *_COUNT),
    ("base_seed", *_COUNT),
    ("warmup_steps", _or_null(_int_at_least(0)), "an integer >= 0 or null"),
    ("optim.lr", *_RATE),
    ("lr", *_RATE),
    ("optim.weight_decay", *_DECAY),
    ("weight_decay", *_DECAY),
    ("moco.temperature", _number_above(0.0), "a positive number"),
    ("moco.momentum", _unit, "a number in [0, 1]"),
    ("data.val_fraction", _fraction, "a fraction in [0, 1)"),
    ("val_fraction", _fraction, "a fraction in [0, 1)"),
    ("foreground_fraction", _unit, "a number in [0, 1]"),
    ("mae.mask_ratio", lambda v: _is_number(v) and 0.0 < v < 1.0, "a fraction in (0, 1)"),
    ("tune.*", _or_null(_each(_number_above(0.0))), "a list of positive numbers or null"),
    ("shots", _sides(None), "a list of positive integers"),
    ("labels_per_class", _or_null(_int_at_least(1)), "a positive integer or null"),
    ("patch_size", _sides(3), "3 positive integers (D, H, W)"),
    ("data.crop_size", _sides(3), "3 positive integers (D, H, W)"),
    ("data.crops_per_volume", *_POSITIVE_INT),
    ("sliding_window.overlap", _fraction, "a fraction in [0, 1)"),
    ("sliding_window.sw_batch_size", *_POSITIVE_INT),
    ("encoder_lr_mult", _number_above(0.0), "a positive number"),
    ("val_size", *_COUNT),
    ("val_max_patients", *_POSITIVE_INT),
)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise a ``MedfoundryError`` naming the first key whose value breaks ``VALUE_RULES``."""
    if config_family(cfg) == "demo":
        return
    for key in sorted(_paths(cfg)):
        bare = key[len("swin.") :] if key.startswith("swin.") else key
        for pattern, check, what in VALUE_RULES:
            if fnmatch.fnmatchcase(bare, pattern):
                value = _get(cfg, key)
                if not check(value):
                    raise MedfoundryError(f"config key {key}: {value!r} is not {what}")
