"""Draw the JSRT landmarks (`medfoundry.evaluate.jsrt_landmarks`) on images of one folder.

Each panel shows the radiograph, the SCR mask outlines and the landmarks (numbered as in
`LANDMARKS`, legend below). The figure of docs/landmarks.md::

    python tools/plot_jsrt_landmarks.py .data/jsrt_dev/train --out docs/img/jsrt_landmarks.png

`--ids A B ...` picks the images (default: four spread over the sorted IDs); `--ids all`
draws every image (for inspection; `--cols` panels a row).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medfoundry.data.manifest import scan_segmentation_folder  # noqa: E402
from medfoundry.evaluate.jsrt_landmarks import (  # noqa: E402
    LANDMARKS,
    STRUCTURES,
    landmarks_from_masks,
    read_binary_mask,
)
from medfoundry.io import read_image  # noqa: E402

OUTLINE = {
    "heart": "tab:red",
    "left_lung": "tab:blue",
    "right_lung": "tab:green",
    "left_clavicle": "tab:purple",
    "right_clavicle": "tab:olive",
}


def _marker(name: str) -> str:
    """Squares on the heart, triangles on the clavicles, circles on the lungs."""
    return "s" if name.startswith("heart") else "^" if "clavicle" in name else "o"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--ids", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/img/jsrt_landmarks.png"))
    ap.add_argument("--cols", type=int, default=4)
    ap.add_argument("--dpi", type=int, default=110)
    args = ap.parse_args()

    items = scan_segmentation_folder(args.folder, structures=STRUCTURES)
    by_id = {item.id: item for item in items}
    if args.ids == ["all"]:
        chosen = items
    elif args.ids:
        chosen = [by_id[i] for i in args.ids]
    else:
        chosen = [items[round(k * (len(items) - 1) / 3)] for k in range(4)]
    cols = min(args.cols, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows + 1.2), squeeze=False)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(LANDMARKS), endpoint=False))
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, chosen, strict=False):
        image = read_image(item.image, ndim=2).array[0]
        masks = {s: read_binary_mask(item.masks[s], image.shape) for s in STRUCTURES}
        points = landmarks_from_masks(masks, item.masks)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        for s, m in masks.items():
            ax.contour(m, [0.5], colors=OUTLINE[s], linewidths=0.7)
        for k, name in enumerate(LANDMARKS):
            x, y = points[name]
            ax.plot(x, y, _marker(name), ms=6, mfc=colors[k], mec="white", mew=0.8)
            ax.annotate(str(k + 1), (x, y), xytext=(4, 3), textcoords="offset points",
                        color="yellow", fontsize=7)  # fmt: skip
        ax.set_title(item.id, fontsize=9)
    handles = [
        plt.Line2D(
            [], [], ls="", marker=_marker(n), mfc=colors[k], mec="gray", label=f"{k + 1} {n}"
        )
        for k, n in enumerate(LANDMARKS)
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(5, cols + 1), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 1.2 / (4 * rows + 1.2), 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out} ({len(chosen)} images)")


if __name__ == "__main__":
    main()
