"""The `medfoundry` command: a thin layer over the package's functions.

Every flag maps to one config key (shown in its help); `--set key=value` reaches any other key.
Errors in the input end the command with a one-line message naming the file, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medfoundry.config import apply_overrides, load_config, set_dotted
from medfoundry.errors import Interrupted, MedfoundryError

# flag dest -> config key, for pretrain
# `medfoundry.zoo.importers.FORMATS`' names, spelled out so building the parser imports no torch
# (a test keeps the two equal)
IMPORT_FORMATS = ["adam_v1", "misfm", "vis_mae", "voco"]

PRETRAIN_FLAGS = {
    "backbone": "backbone.name",
    "width": "backbone.width",
    "in_channels": "backbone.in_channels",
    "epochs": "epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "load_size": "data.load_size",
    "input_size": "views.out_size",
    "queue_size": "moco.queue_size",
    "num_workers": "data.num_workers",
    "seed": "seed",
    "precision": "trainer.precision",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "strategy": "trainer.strategy",
    "probe_data": "probe.data",
}


class _MethodNames(Sequence[str]):
    """The registered pretraining methods in their order (``methods.method_names``), looked up
    when first parsed or shown: building the parser imports no torch."""

    def _names(self) -> tuple[str, ...]:
        from medfoundry.methods import method_names

        return method_names()

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


def _devices(value: str) -> Any:
    return int(value) if value.isdigit() else value


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining on a folder of images")
    method = p.add_argument("--method", required=True, help="SSL method (config key: method)")
    method.choices = _MethodNames()  # set after add_argument, which would list them (torch)
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        type=Path,
        help="image folder(s) or files, or one `prepare-2d --store` 2D store; for "
        "volume_fusion/voco one `medfoundry prepare` store",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--config", help="preset name or YAML file (default: the method's preset)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key"
    )
    g = p.add_argument_group("config overrides (each maps to the key in brackets)")
    types = {
        "width": float,
        "lr": float,
        "in_channels": int,
        "batch_size": int,
        "load_size": int,
        "input_size": int,
        "queue_size": int,
        "num_workers": int,
        "seed": int,
        "num_nodes": int,
        "devices": _devices,
        "epochs": int,
    }
    for dest, key in PRETRAIN_FLAGS.items():
        g.add_argument(
            f"--{dest.replace('_', '-')}", dest=dest, type=types.get(dest, str), help=f"[{key}]"
        )


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained backbone on labeled data (2D, or 3D segmentation)",
        description="Segmentation is 3D when --data is a 3D store (medfoundry prepare) or an "
        "nnU-Net/MSD folder, or when --pretrained is a 3D checkpoint (Volume Fusion, VoCo); "
        "3D rules: medfoundry.tasks.segmentation3d.",
    )
    p.add_argument("--task", required=True, choices=["classification", "segmentation"])
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="classification: DIR/<CLASS>/images; segmentation: DIR/images + DIR/masks/<structure> "
        "(2D), or a 3D store / nnU-Net/MSD folder (imagesTr/, labelsTr/, dataset.json)",
    )
    p.add_argument(
        "--test-data",
        type=Path,
        help="optional labeled test folder, same layout (3D: a store or an MSD folder, prepared "
        "with the training store's settings)",
    )
    p.add_argument("--pretrained", required=True, help="run folder or checkpoint, or 'none'")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--overwrite", action="store_true", help="replace a finished fine-tuning run in --out"
    )
    p.add_argument(
        "--config",
        help="preset name or YAML (default finetune_<task>; 3D: finetune_segmentation3d)",
    )
    p.add_argument("--steps", type=int, help="[steps]")
    p.add_argument("--lr", type=float, help="[lr]")
    p.add_argument("--batch-size", type=int, help="[batch_size]")
    p.add_argument("--image-size", type=int, help="[image_size] (2D)")
    p.add_argument(
        "--patch-size", type=int, nargs=3, metavar=("D", "H", "W"), help="[patch_size] (3D)"
    )
    p.add_argument("--labels-per-class", type=int, help="[labels_per_class] (classification)")
    p.add_argument(
        "--linear-probe",
        action="store_true",
        default=None,
        help="[linear_probe] freeze the backbone",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def _add_benchmark(sub: argparse._SubParsersAction, registered: bool) -> None:
    """`benchmark <command>` for every registered benchmark (same flags for all), and merge;
    without ``registered`` only merge (the registry imports torch)."""
    p = sub.add_parser("benchmark", help="run a benchmark protocol")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    if registered:
        from medfoundry.benchmarks import specs

        for spec in specs().values():
            _add_benchmark_command(bsub, spec)
    m = bsub.add_parser(
        "merge",
        help="merge arms run as separate processes (same command and config, --arms NAME, own "
        "--out) into one benchmark folder; rerun that folder's command to write its results",
        description="Copies the finished runs and lr-tuning scores of every arm in SOURCE "
        "folders into --into, after checking that all folders hold the same protocol (config, "
        "splits, pool and test cases) and that an arm in two folders trains the same network "
        "(medfoundry.benchmarks.merge). Rerunning --into's benchmark command then finds those "
        "jobs done, trains what is left and writes results.json, results.md and the plot.",
    )
    m.add_argument("--into", required=True, type=Path, help="benchmark folder to complete")
    m.add_argument("sources", nargs="+", type=Path, help="benchmark folders to copy arms from")


def _add_benchmark_command(bsub: argparse._SubParsersAction, spec: Any) -> None:
    """One benchmark's subcommand: the shared flags, then the spec's own (each sets a key)."""
    b = bsub.add_parser(spec.command, help=spec.help, description=spec.description)
    b.add_argument("--train-data", required=True, type=Path, help=spec.train_help)
    b.add_argument("--test-data", required=True, type=Path, help=spec.test_help)
    b.add_argument("--pretrained", nargs="+", required=True, help=spec.pretrained_help)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument(
        "--config",
        default=spec.preset,
        help=f"preset name or YAML (default {spec.preset}; {spec.preset}_cpu for CPU)",
    )
    for flag in spec.flags:
        b.add_argument(flag.name, dest=flag.key, type=flag.type, nargs=flag.nargs, help=flag.help)
    if spec.trains:
        b.add_argument("--repeats", type=int, help="[repeats]")
    if spec.has_steps:
        b.add_argument("--steps", type=int, help="[steps]")
    if spec.size_flag == "image-size":
        b.add_argument("--image-size", type=int, help="[image_size]")
    elif spec.size_flag == "patch-size":
        b.add_argument(
            "--patch-size", type=int, nargs=3, metavar=("D", "H", "W"), help="[patch_size]"
        )
    b.add_argument(
        "--arms",
        nargs="+",
        metavar="NAME",
        help="run only these arms (names as in results.md, e.g. scratch); give each such "
        "process its own --out and join the folders with `benchmark merge`",
    )
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key"
    )
    b.set_defaults(flag_keys=[f.key for f in spec.flags])


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="pretrain Adam on the bundled chest X-rays and compare with scratch"
    )
    p.add_argument("--out", type=Path, default=Path("medfoundry-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="smoke-test scale (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _add_prepare_2d(sub: argparse._SubParsersAction) -> None:
    """The `prepare-2d` subcommand: flags map to `build_corpus_2d` arguments."""
    p = sub.add_parser(
        "prepare-2d",
        help="turn 2D images and 3D volumes (CT windows, MR slices) into a 2D PNG corpus",
        description="Scan the sources recursively and write size x size 8-bit PNGs, "
        "manifest.csv and corpus.json to --out (rules: medfoundry.data.corpus2d).",
    )
    p.add_argument(
        "--source",
        required=True,
        action="append",
        type=Path,
        help="folder (searched recursively) or file; repeat for several",
    )
    p.add_argument("--out", required=True, type=Path, help="corpus folder (new or empty)")
    p.add_argument("--size", type=int, default=224, help="output side in pixels (default 224)")
    p.add_argument(
        "--ct-window",
        nargs="+",
        action="extend",
        metavar="WINDOW",
        help="CT windows, one PNG each: lung, soft_tissue, bone, wide (default), or "
        "LEVEL,WIDTH in HU (write a negative level as --ct-window=-600,1500)",
    )
    p.add_argument(
        "--axis", default="axial", choices=["axial", "coronal", "sagittal"], help="slice axis"
    )
    p.add_argument(
        "--modality",
        default="unknown",
        help="modality of volumes without tags (NIfTI, NRRD); 'unknown' = CT when the "
        "minimum is <= -500 HU, else MR-style percentile normalisation",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an old corpus in --out")
    p.add_argument(
        "--store",
        action="store_true",
        help="also write the finished corpus as a 2D store (memory-mapped shards) into "
        "OUT/store2d, for `pretrain --data OUT/store2d` without decoding every image first",
    )
    p.add_argument(
        "--shard-size", type=int, default=4096, help="images per store shard (default 4096)"
    )
    p.add_argument("--no-progress", action="store_true")


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    """The `prepare` subcommand: flags map to `prepare_store` arguments."""
    p = sub.add_parser(
        "prepare",
        help="preprocess 3D volumes (nnU-Net/MSD folder or plain folder) into a store of "
        "resampled, [0, 1]-scaled, foreground-cropped .npy volumes for fast random crops",
        description="Read every volume under --data, resample it to one spacing, scale it to "
        "[0, 1], crop it to its foreground and write .npy files and store.json to --out "
        "(rules: medfoundry.data.store.build).",
    )
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="nnU-Net/MSD folder (imagesTr/, labelsTr/, dataset.json, imagesTs/) or a folder "
        "of volumes (NIfTI, NRRD/MHA, DICOM series; searched recursively)",
    )
    p.add_argument("--out", required=True, type=Path, help="store folder (new or empty)")
    p.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("D", "H", "W"),
        help="target spacing in mm along D (superior), H (posterior), W (left); default: the "
        "dataset's median spacing",
    )
    p.add_argument(
        "--modality",
        default="auto",
        choices=["auto", "CT", "MR"],
        help="modality of volumes without a tag (NIfTI, NRRD); auto = CT when the minimum is "
        "<= -500 HU, else MR-style percentile scaling",
    )
    p.add_argument(
        "--ct-clip",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        default=(-1000.0, 1000.0),
        help="CT: HU range mapped to [0, 1] (default -1000 1000)",
    )
    p.add_argument("--no-crop", action="store_true", help="keep the full extent (no crop)")
    p.add_argument("--overwrite", action="store_true", help="replace a different store in --out")
    p.add_argument("--no-progress", action="store_true")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """The `predict` subcommand: flags map to `medfoundry.tasks.predict.predict` arguments."""
    p = sub.add_parser(
        "predict",
        help="use a fine-tuned model: 3D/2D segmentation masks at each input's own geometry, "
        "or class probabilities in one CSV",
        description="3D segmentation: <out>/<stem>.nii.gz (uint8 labels, the input's shape and "
        "affine) per scan (rules: medfoundry.tasks.predict3d). 2D segmentation: "
        "<out>/<stem>_<structure>.png masks and <stem>_labels.png at the image's size; "
        "classification: <out>/predictions.csv (rules: medfoundry.tasks.predict2d).",
    )
    p.add_argument(
        "--model", required=True, type=Path, help="run folder of `finetune` (or its checkpoint/)"
    )
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        metavar="PATH",
        help="3D: NIfTI/NRRD/MHA files, folders of them, or DICOM series folders; "
        "2D: PNG/JPEG/DICOM images or folders of them",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="3D: also write <stem>_probabilities.nii.gz",
    )
    p.add_argument(
        "--overlay", action="store_true", help="2D segmentation: also write <stem>_overlay.png"
    )
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs exist")
    p.add_argument(
        "--continue-on-error",
        action="store_true",
        help="go on after a bad input and list the failures at the end",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--no-progress", action="store_true")


def _add_export(sub: argparse._SubParsersAction) -> None:
    """The `export` subcommand: flags map to `medfoundry.zoo.export.export_model` arguments."""
    p = sub.add_parser(
        "export",
        help="write a fine-tuned model as ONNX (checked against PyTorch with onnxruntime)",
        description="Writes the network (no preprocessing) as ONNX with a dynamic batch axis "
        "(and spatial axes where the network allows), plus <file>.json with the preprocessing "
        "(rules: medfoundry.zoo.export; needs the medfoundry[export] extra).",
    )
    p.add_argument(
        "--model", required=True, type=Path, help="run folder of `finetune` (or its checkpoint/)"
    )
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", type=Path, default=None, help="file (default <model>/model.onnx)")


def cmd_export(args: argparse.Namespace) -> None:
    from medfoundry.zoo.export import export_model

    report = export_model(args.model, args.out)
    axes = "batch and spatial axes dynamic" if report.dynamic_spatial else "batch axis dynamic"
    print(
        f"export: {report.path} ({axes}; traced at {report.input_shape}; max |ONNX - PyTorch| "
        f"{report.max_abs_diff:.2e} over inputs {report.checked_shapes}); preprocessing: "
        f"{report.path}.json"
    )


def _add_import(sub: argparse._SubParsersAction) -> None:
    """The `import` subcommand: flags map to `medfoundry.zoo.import_checkpoint` arguments."""
    p = sub.add_parser(
        "import",
        help="convert a seed project's published weights into a medfoundry checkpoint",
        description="Writes <out>/checkpoint/ (usable as --pretrained) and "
        "<out>/import_report.json (rules: medfoundry.zoo.importers).",
    )
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS, help="published format")
    p.add_argument("src", type=Path, help="the published file (.pth/.pt/.safetensors)")
    p.add_argument("--out", required=True, type=Path, help="run folder to create")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: file's)")
    p.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument over the published one (JSON value), e.g. resolution_mode=2",
    )


def cmd_import(args: argparse.Namespace) -> None:
    import json

    from medfoundry.zoo.importers import describe_report, import_checkpoint

    arch: dict[str, Any] = {}
    for item in args.arch:
        key, sep, value = item.partition("=")
        if not sep:
            raise MedfoundryError(f"--arch {item!r}: expected KEY=VALUE")
        try:
            arch[key] = json.loads(value)
        except json.JSONDecodeError:
            arch[key] = value
    report = import_checkpoint(args.format, args.src, args.out, args.in_channels, arch)
    print(describe_report(report))
    print(f"checkpoint: {args.out / 'checkpoint'}")


def _add_embed(sub: argparse._SubParsersAction) -> None:
    """The `embed` subcommand: flags map to `medfoundry.tasks.embed.embed` arguments."""
    p = sub.add_parser(
        "embed",
        help="Eve: embeddings of whole images, grids of crops or crops at points, with maps",
        description="Eve (Eden's embedding) of a crop is the pooled backbone vector of the crop "
        "resized to the model's input size. Writes embeddings.npz and index.csv (image, box, "
        "scale, label per crop), map.png (PCA, and t-SNE with the medfoundry[eve] extra) and, "
        "with --similarity, similarity.png/.npz (rules: medfoundry.tasks.embed).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="pretrained run folder or checkpoint; 'random:RUN' for random weights of RUN's network",
    )
    p.add_argument("--input", required=True, nargs="+", type=Path, help="image files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--grid", type=int, default=1, help="crops per side at each scale (default 1)")
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="crop sides as fractions of the image's shorter side (default 1 = whole images)",
    )
    p.add_argument(
        "--points", type=Path, help="CSV with columns image, x, y, size (and name): one crop each"
    )
    p.add_argument(
        "--similarity",
        nargs=3,
        metavar=("IMAGE", "X", "Y"),
        help="also map the cosine of this point's Eve over dense crops of every input image",
    )
    p.add_argument("--crop-size", type=float, help="[similarity] crop side in pixels (default ¼)")
    p.add_argument("--stride", type=float, help="[similarity] crop step in pixels (default ¼ crop)")
    p.add_argument("--batch-size", type=int, default=256, help="crops per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights ('random:')")
    p.add_argument("--overwrite", action="store_true", help="replace a finished output folder")
    p.add_argument("--no-progress", action="store_true")


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed the inputs and print a one-line summary."""
    from medfoundry.tasks.embed import embed

    model, like = args.model, None
    if str(model).startswith("random:"):
        model, like = None, str(args.model)[len("random:") :]
    similarity = None
    if args.similarity:
        image, x, y = args.similarity
        try:
            similarity = (Path(image), float(x), float(y))
        except ValueError as exc:
            raise MedfoundryError(f"--similarity {image} {x} {y}: X and Y must be numbers") from exc
    if args.grid < 1 or args.batch_size < 1:
        raise MedfoundryError("--grid and --batch-size must be at least 1")
    summary = embed(
        model,
        args.input,
        args.out,
        grid=args.grid,
        scales=args.scales,
        points=args.points,
        similarity=similarity,
        crop_size=args.crop_size,
        stride=args.stride,
        batch_size=args.batch_size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        random_like=like,
    )
    extra = ", similarity.png" if "similarity" in summary else ""
    print(
        f"embed: {args.out} ({summary['crops']} crops of {summary['images']} images, "
        f"{summary['dim']}-d, {summary['model']}; embeddings.npz, index.csv, map.png{extra})"
    )


def _add_landmarks(sub: argparse._SubParsersAction) -> None:
    """The `landmarks` subcommand: a JSRT folder's mask-derived landmarks as a points CSV."""
    p = sub.add_parser(
        "landmarks",
        help="JSRT landmarks from the SCR masks as a points CSV for `embed --points`",
        description="Derives the 14 named landmarks per image of a JSRT-layout folder (images/ "
        "and masks/<structure>/; rules: docs/landmarks.md) and writes them as a CSV with "
        "columns image, x, y, size, name: one crop of --size pixels per landmark.",
    )
    p.add_argument("--data", required=True, type=Path, help="JSRT-layout folder")
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument("--size", type=int, default=128, help="crop side in pixels (default 128)")


def cmd_landmarks(args: argparse.Namespace) -> None:
    """Write the points CSV and print a one-line summary."""
    from medfoundry.evaluate.jsrt_landmarks import write_points_csv

    if args.out.is_dir():
        raise MedfoundryError(f"{args.out}: --out is a folder; name the CSV file to write")
    rows = write_points_csv(args.data, args.out, args.size)
    print(f"landmarks: {args.out} ({rows} points of {args.data}, crops of {args.size} px)")


def build_parser(benchmarks: bool = False) -> argparse.ArgumentParser:
    """The `medfoundry` parser; ``benchmarks``: with every registered benchmark's subcommand
    (importing their modules, and torch: only when a command line names `benchmark`)."""
    parser = argparse.ArgumentParser(prog="medfoundry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_finetune(sub)
    _add_benchmark(sub, benchmarks)
    _add_demo(sub)
    _add_prepare_2d(sub)
    _add_prepare(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_import(sub)
    _add_embed(sub)
    _add_landmarks(sub)
    return parser


def cmd_pretrain(args: argparse.Namespace) -> None:
    from medfoundry.tasks.pretrain import pretrain

    cfg = load_config(args.config or args.method)
    cfg["method"] = args.method
    for dest, key in PRETRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            set_dotted(cfg, key, value)
    cfg = apply_overrides(cfg, args.set)
    run = pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"checkpoint: {run / 'checkpoint'}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from medfoundry.tasks import finetune
    from medfoundry.zoo.meta import resolve_checkpoint

    # resolved once here: every step below reads this Checkpoint, not the folder again
    pretrained = None if args.pretrained.lower() == "none" else resolve_checkpoint(args.pretrained)
    three_d = args.task == "segmentation" and finetune.is_3d_segmentation(args.data, pretrained)
    flags = ["steps", "lr", "batch_size"]
    flags += ["patch_size"] if three_d else ["image_size", "labels_per_class", "linear_probe"]
    unused = [
        f"--{d.replace('_', '-')}"
        for d in ("image_size", "labels_per_class", "linear_probe", "patch_size")
        if d not in flags and getattr(args, d) is not None
    ]
    if unused:
        kind = "3D segmentation" if three_d else f"2D {args.task}"
        raise MedfoundryError(f"{', '.join(unused)}: not used by {kind}")
    default = "finetune_segmentation3d" if three_d else f"finetune_{args.task}"
    cfg = load_config(args.config or default)
    for dest in flags:
        value = getattr(args, dest)
        if value is not None:
            set_dotted(cfg, dest, value)
    cfg = apply_overrides(cfg, args.set)
    fn = (
        finetune.finetune_classification
        if args.task == "classification"
        else finetune.finetune_segmentation
    )
    fn(
        args.data,
        pretrained,
        args.out,
        cfg,
        test_data=args.test_data,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"checkpoint: {args.out / 'checkpoint'}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    """Run (or resume) the benchmark ``args.benchmark`` into --out, or merge folders."""
    if args.benchmark == "merge":
        from medfoundry.benchmarks.merge import merge_benchmark_folders

        merged = merge_benchmark_folders(args.into, args.sources)
        for source, arms in merged.items():
            print(f"{source}: {', '.join(arms)} -> {args.into}")
        print("rerun the benchmark command of --into to finish it and write its results")
        return
    from medfoundry.benchmarks import get_spec

    spec = get_spec(args.benchmark)
    cfg = load_config(args.config)
    for key in [*args.flag_keys, "repeats", "steps", "image_size", "patch_size"]:
        value = getattr(args, key, None)
        if value is not None:
            set_dotted(cfg, key, value)
    cfg = apply_overrides(cfg, args.set)
    pretrained = [None if p.lower() == "none" else p for p in args.pretrained]
    spec.run(
        args.train_data,
        args.test_data,
        pretrained,
        args.out,
        cfg,
        progress=not args.no_progress,
        arms=args.arms,
    )
    print(f"results: {args.out / 'results.md'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from medfoundry.tasks.demo import run_demo

    run_demo(args.out, quick=args.quick, progress=not args.no_progress, seed=args.seed)


def cmd_prepare_2d(args: argparse.Namespace) -> None:
    """Build a 2D corpus and print a one-line summary."""
    from medfoundry.data.corpus2d import build_corpus_2d

    if args.store and args.shard_size < 1:  # before the corpus build, not after it
        raise MedfoundryError(f"--shard-size must be a positive integer, got {args.shard_size}")
    summary = build_corpus_2d(
        args.source,
        args.out,
        size=args.size,
        ct_windows=args.ct_window or ("wide",),
        axis=args.axis,
        modality=args.modality,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    totals = summary["totals"]
    skipped = ", ".join(f"{k} {v}" for k, v in totals["skipped"].items()) or "none"
    print(
        f"corpus: {args.out} ({summary['images']} images from {totals['inputs_2d']} 2D files "
        f"and {totals['volumes']} volumes; skipped slices: {skipped}; {summary['seconds']} s)"
    )
    if args.store:
        from medfoundry.data.store.images2d import STORE2D_DIR
        from medfoundry.data.store.images2d_build import build_store2d

        store = build_store2d(
            args.out,
            args.out / STORE2D_DIR,
            shard_size=args.shard_size,
            progress=not args.no_progress,
        )
        print(
            f"2D store: {args.out / STORE2D_DIR} ({store['count']} images in "
            f"{len(store['shards'])} shards; {store['seconds']} s)"
        )


def cmd_prepare(args: argparse.Namespace) -> None:
    """Build a 3D store and print a one-line summary."""
    from medfoundry.data.store.build import prepare_store

    summary = prepare_store(
        args.data,
        args.out,
        target_spacing=args.spacing,
        modality=args.modality,
        ct_clip=args.ct_clip,
        crop_foreground=not args.no_crop,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    counts = summary["counts"]
    spacing = "x".join(f"{v:g}" for v in summary["settings"]["target_spacing"])
    state = "up to date, reused" if summary.get("reused") else f"{summary['seconds']} s"
    print(
        f"store: {args.out} ({counts['cases']} cases, {counts['labeled']} labeled, "
        f"{counts['empty_labels']} empty labels, {counts['skipped']} skipped; spacing "
        f"{spacing} mm ({summary['target_spacing_from']}); "
        f"{summary['bytes'] / 2**20:.1f} MiB; {state})"
    )


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict the inputs and print a one-line summary (notes and failures first, one line each)."""
    from medfoundry.tasks.predict import predict

    summary = predict(
        args.model,
        args.input,
        args.out,
        probabilities=args.probabilities,
        overlay=args.overlay,
        overwrite=args.overwrite,
        continue_on_error=args.continue_on_error,
        progress=not args.no_progress,
        device=args.device,
    )
    for note in summary.notes:
        print(f"medfoundry: note: {note}", file=sys.stderr)
    for _, message in summary.failed:
        print(f"medfoundry: failed: {message}", file=sys.stderr)
    print(
        f"predict: {summary.table or args.out} ({len(summary.written)} written, "
        f"{len(summary.skipped)} skipped "
        f"(outputs exist; --overwrite redoes them), {len(summary.failed)} failed)"
    )
    if summary.failed:
        raise MedfoundryError(f"{len(summary.failed)} input(s) failed (listed above)")


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # the console command (in-process callers pass argv)
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(benchmarks="benchmark" in words).parse_args(words)
    handlers = {
        "pretrain": cmd_pretrain,
        "finetune": cmd_finetune,
        "benchmark": cmd_benchmark,
        "demo": cmd_demo,
        "prepare-2d": cmd_prepare_2d,
        "prepare": cmd_prepare,
        "predict": cmd_predict,
        "export": cmd_export,
        "import": cmd_import,
        "embed": cmd_embed,
        "landmarks": cmd_landmarks,
    }
    from medfoundry.runtime import stop_signals

    try:
        with stop_signals(), one_line_warnings(console=console):
            handlers[args.command](args)
    except MedfoundryError as exc:
        print(f"medfoundry: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"medfoundry: {interrupted_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medfoundry: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise  # not the environment's doing: a bug, keep its traceback
        print(f"medfoundry: error: {environment_message(exc)}", file=sys.stderr)
        return 2
    return 0


#: OSError numbers that the machine causes, not the code (a full disk, a read-only or
#: unwritable folder, a file where a folder should be): one line and exit 2, like a user error.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EROFS,
        errno.EACCES,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
    }
)


def environment_message(exc: OSError) -> str:
    """`<file>: <reason>` of an environment OSError (its file when it names one)."""
    reason = exc.strerror or os.strerror(exc.errno or 0)
    name = exc.filename if exc.filename is not None else exc.filename2
    if name is None:
        return reason
    return f"{os.fsdecode(name)}: {reason}"


@contextlib.contextmanager
def one_line_warnings(console: bool) -> Iterator[None]:
    """On the console, the package's own warnings print as one `medfoundry: warning: ...` line
    (a library's keep Python's format); in-process callers (``main(argv)``) keep Python's."""
    if not console:
        yield
        return
    package = Path(__file__).resolve().parent
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if package in Path(filename).resolve().parents:
            print(f"medfoundry: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


def interrupted_message(exc: Interrupted) -> str:
    """One line: which signal stopped the command and, for a run folder, how to continue."""
    try:
        name = signal.Signals(exc.signum).name
    except ValueError:
        name = f"signal {exc.signum}"
    if exc.run_dir is None:
        return f"interrupted ({name})"
    return f"interrupted ({name}); rerun with --resume to continue the run in {exc.run_dir}"


if __name__ == "__main__":
    sys.exit(main())
