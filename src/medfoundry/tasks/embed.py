"""`medfoundry embed`: Eve embeddings of whole images, grids of crops or crops centred on points,
with their provenance (`embeddings.npz`, `index.csv`), a PCA / t-SNE map and, on request, the
cosine-similarity map of one point's Eve over the other images.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medfoundry.data.unlabeled2d import collect_images
from medfoundry.embed.crops import centred_boxes, dense_centres, grid_boxes
from medfoundry.embed.encoder import EveModel, embed_boxes, load_eve_model, load_images
from medfoundry.embed.maps import plot_embedding_map, plot_similarity
from medfoundry.errors import InputError
from medfoundry.runtime import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    check_run_dir,
    clear_outputs,
    record_run,
)
from medfoundry.zoo import CheckpointLike

DONE = "embed.json"  # written last: the folder is complete
MAX_SIMILARITY_TARGETS = 8  # images drawn in similarity.png (all are in similarity.npz)


@dataclass
class Crops:
    """Boxes to embed and where they come from: image index, box, scale, label per row."""

    image_index: Tensor  # (M,)
    boxes: Tensor  # (M, 4) x0, y0, x1, y1 in stored pixels
    scale: Tensor  # (M,) crop side / min(H, W)
    labels: list[str]


def folder_label(path: Path, roots: Sequence[Path]) -> str:
    """An image's label for the map: its folder relative to the input it was found under."""
    for root in roots:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return str(rel.parent) if str(rel.parent) != "." else root.name
    return path.parent.name


def whole_and_grid_crops(
    sizes: Tensor, labels: list[str], grid: int, scales: Sequence[float]
) -> Crops:
    """Every image's ``grid`` crops at each scale (``grid=1, scales=[1]``: whole images)."""
    index, boxes, box_scales, box_labels = [], [], [], []
    for i, (h, w) in enumerate(sizes.tolist()):
        b, s = grid_boxes(int(h), int(w), grid, scales)
        index.append(torch.full((len(b),), i))
        boxes.append(b)
        box_scales.append(s)
        box_labels += [labels[i]] * len(b)
    return Crops(torch.cat(index), torch.cat(boxes), torch.cat(box_scales), box_labels)


def read_points(csv_path: Path) -> list[dict[str, Any]]:
    """Rows of a points CSV (columns image, x, y, size, and optionally name)."""
    try:
        text = csv_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(csv_path, f"unreadable points file ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = {"image", "x", "y", "size"} - set(reader.fieldnames or [])
    if missing:
        raise InputError(csv_path, f"points file lacks the column(s) {sorted(missing)}")
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            x, y, size = float(row["x"]), float(row["y"]), float(row["size"])
        except (TypeError, ValueError) as exc:
            raise InputError(csv_path, f"line {line}: x, y and size must be numbers") from exc
        if size <= 0:
            raise InputError(csv_path, f"line {line}: size must be positive, got {size}")
        rows.append({"image": row["image"], "x": x, "y": y, "size": size, "name": row.get("name")})
    if not rows:
        raise InputError(csv_path, "points file has no rows")
    return rows


def resolve_point_image(name: str, csv_path: Path, inputs: Sequence[Path]) -> Path:
    """A points row's image: absolute, else relative to the CSV's folder, else to an input."""
    p = Path(name)
    candidates = [p] if p.is_absolute() else [csv_path.parent / p]
    candidates += [root / p for root in inputs if root.is_dir()]
    candidates += [root for root in inputs if root.is_file() and root.name == p.name]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise InputError(csv_path, f"image {name!r} not found (relative to the CSV or an --input)")


def point_crops(
    rows: list[dict[str, Any]], csv_path: Path, inputs: Sequence[Path]
) -> tuple[list[Path], Crops]:
    """The images the points name and one box per point."""
    paths: list[Path] = []
    where: dict[Path, int] = {}
    index = []
    for row in rows:
        path = resolve_point_image(str(row["image"]), csv_path, inputs)
        if path not in where:
            where[path] = len(paths)
            paths.append(path)
        index.append(where[path])
    centres = torch.tensor([[r["x"], r["y"]] for r in rows], dtype=torch.float32)
    sizes = torch.tensor([r["size"] for r in rows], dtype=torch.float32)
    labels = [str(r["name"]) if r.get("name") else Path(r["image"]).parent.name for r in rows]
    crops = Crops(
        torch.tensor(index), centred_boxes(centres, sizes), torch.zeros(len(rows)), labels
    )
    return paths, crops


def write_index(out: Path, paths: Sequence[Path], crops: Crops, emb: Tensor) -> None:
    """`embeddings.npz` (embeddings + provenance) and `index.csv` (one row per crop)."""
    b = crops.boxes.numpy()
    arrays = {
        "embeddings": emb.numpy().astype(np.float32),
        "image_index": crops.image_index.numpy().astype(np.int64),
        "boxes": b.astype(np.float32),
        "scale": crops.scale.numpy().astype(np.float32),
        "label": np.asarray(crops.labels, dtype=str),
        "images": np.asarray([str(p) for p in paths], dtype=str),
    }

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_save(out / "embeddings.npz", save)
    lines = io.StringIO()
    w = csv.writer(lines)
    w.writerow(["row", "image", "x0", "y0", "x1", "y1", "cx", "cy", "size", "scale", "label"])
    for r, (i, box, scale, label) in enumerate(
        zip(crops.image_index.tolist(), b.tolist(), crops.scale.tolist(), crops.labels, strict=True)
    ):
        x0, y0, x1, y1 = box
        w.writerow(
            [r, paths[i], *(f"{v:.1f}" for v in box), f"{(x0 + x1) / 2:.1f}", f"{(y0 + y1) / 2:.1f}",
             f"{x1 - x0:.1f}", f"{scale:.4g}", label]
        )  # fmt: skip
    atomic_write_text(out / "index.csv", lines.getvalue())


def similarity_maps(
    model: EveModel,
    query: Tensor,
    images: Tensor,
    sizes: Tensor,
    crop: float,
    stride: float,
    batch_size: int,
    progress: bool,
) -> list[Tensor]:
    """Cosine of ``query`` (D,) with the Eve of dense crops (side ``crop``, every ``stride``
    pixels) of each image; one (rows, cols) map per image."""
    maps = []
    q = F.normalize(query.float(), dim=0)
    for i, (h, w) in enumerate(sizes.tolist()):
        centres = dense_centres(int(h), int(w), stride)
        boxes = centred_boxes(centres, crop)
        emb = embed_boxes(
            model, images, sizes, torch.full((len(boxes),), i), boxes, batch_size, progress,
            desc=f"similarity {i + 1}/{len(sizes)}",
        )  # fmt: skip
        cols = len(torch.unique(centres[:, 0]))
        maps.append((F.normalize(emb, dim=1) @ q).reshape(-1, cols))
    return maps


def _display(image: Tensor) -> np.ndarray:
    """A (C, h, w) normalised image as a gray (h, w) array for plotting."""
    return image.float().mean(dim=0).numpy()


def embed(
    model_path: CheckpointLike | None,
    inputs: Sequence[Path],
    out: Path,
    *,
    grid: int = 1,
    scales: Sequence[float] = (1.0,),
    points: Path | None = None,
    similarity: tuple[Path, float, float] | None = None,
    crop_size: float | None = None,
    stride: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    random_like: CheckpointLike | None = None,
) -> dict[str, Any]:
    """Embed the inputs' crops with the model's backbone and write the outputs under ``out``.

    ``model_path=None`` with ``random_like`` embeds with randomly initialised weights of the same
    network (the random-features baseline). Returns the summary written to ``embed.json``.
    """
    out = Path(out)
    finished = check_run_dir(out, [DONE], overwrite, "embeddings")
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.exists():
            raise InputError(p, "no such file or folder")
    model = load_eve_model(model_path, like=random_like, seed=seed)
    if similarity is not None:  # the query point is checked before any embedding
        _query_image(model, similarity)
    if points is not None:
        paths, crops = point_crops(read_points(Path(points)), Path(points), inputs)
    else:
        paths = collect_images(inputs)
    images, sizes = load_images(paths, model, progress)
    if points is None:
        labels = [folder_label(p, [i for i in inputs if i.is_dir()]) for p in paths]
        crops = whole_and_grid_crops(sizes, labels, grid, scales)
    else:  # point crops: scale relative to the image's shorter side
        side = crops.boxes[:, 2] - crops.boxes[:, 0]
        crops.scale = side / sizes[crops.image_index].min(dim=1).values.float()
    if finished:  # the old marker goes first: a failure below leaves an unfinished folder
        clear_outputs(out, [DONE])
    record_run(
        out,
        {
            "model": str(model_path) if model_path is not None else f"random like {random_like}",
            "inputs": [str(p) for p in inputs],
            "grid": grid,
            "scales": list(scales),
            "points": str(points) if points else None,
            "similarity": [str(v) for v in similarity] if similarity else None,
            "seed": seed,
        },
    )
    emb = embed_boxes(model, images, sizes, crops.image_index, crops.boxes, batch_size, progress)
    write_index(out, paths, crops, emb)
    tsne = plot_embedding_map(
        emb, crops.labels, out / "map.png", f"Eve of {len(emb)} crops, {model.name}", seed
    )
    summary: dict[str, Any] = {
        "model": model.name,
        "load": model.load_summary,
        "input_size": model.input_size,
        "images": len(paths),
        "crops": len(emb),
        "dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
        "map": "map.png",
        "tsne": tsne,
    }
    if similarity is not None:
        summary["similarity"] = _write_similarity(
            model, similarity, paths, images, sizes, out, crop_size, stride, batch_size, progress
        )
    atomic_write_json(out / DONE, summary)
    return summary


def _query_image(model: EveModel, similarity: tuple[Path, float, float]) -> tuple[Tensor, Tensor]:
    """The similarity query's image and stored size; the point must lie inside the image."""
    qpath, qx, qy = Path(similarity[0]), float(similarity[1]), float(similarity[2])
    qimg, qsize = load_images([qpath], model)
    h, w = qsize[0].tolist()
    if not (0 <= qx < w and 0 <= qy < h):
        raise InputError(qpath, f"similarity point ({qx}, {qy}) lies outside the {w}x{h} image")
    return qimg, qsize


def _write_similarity(
    model: EveModel,
    similarity: tuple[Path, float, float],
    paths: Sequence[Path],
    images: Tensor,
    sizes: Tensor,
    out: Path,
    crop_size: float | None,
    stride: float | None,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """The query point's Eve against dense crops of every input image: npz + PNG."""
    qpath, qx, qy = Path(similarity[0]), float(similarity[1]), float(similarity[2])
    qimg, qsize = _query_image(model, similarity)
    h, w = qsize[0].tolist()
    crop = float(crop_size or min(h, w) / 4)
    step = float(stride or crop / 4)
    qbox = centred_boxes(torch.tensor([[qx, qy]]), crop)
    query = embed_boxes(model, qimg, qsize, torch.zeros(1, dtype=torch.long), qbox)[0]
    maps = similarity_maps(model, query, images, sizes, crop, step, batch_size, progress)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"map_{i}": m.numpy() for i, m in enumerate(maps)},
                     images=np.asarray([str(p) for p in paths], dtype=str))  # fmt: skip

    atomic_save(out / "similarity.npz", save)
    shown = [
        (paths[i].name, _display(images[i]), maps[i].numpy(), tuple(sizes[i].tolist()))
        for i in range(min(len(paths), MAX_SIMILARITY_TARGETS))
    ]
    plot_similarity(
        _display(qimg[0]) , (qx * model.work_size / w, qy * model.work_size / h), shown,
        out / "similarity.png",
        f"cosine of the Eve at ({qx:.0f}, {qy:.0f}) of {qpath.name}, crops {crop:.0f} px",
    )  # fmt: skip
    return {"query": [str(qpath), qx, qy], "crop": crop, "stride": step, "png": "similarity.png"}
