"""Draw filtered pseudo-labels over their CTs, to look at before a student trains on them.

    python benchmarks/pseudo_gallery.py --pseudo $LIVERSEG_HOME/pseudo/all --out pseudo_all.png

One row per series (``training/pseudo_labels.py`` output): a coronal view through the liver, a coronal view
through the hard negatives (or the liver again when there are none), and the axial slice with the most hard-negative
voxels. Liver green, hard negative red, ignored yellow. The picture shows the unlabelled CTs: do not commit it
where their licence does not allow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from LiverSegLib.io.image_io import read_volume  # noqa: E402
from LiverSegLib.pipeline.geometry import to_canonical  # noqa: E402
from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL, IGNORE_LABEL  # noqa: E402

COLOURS = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.2, 0.45), (0.95, 0.1, 0.1, 0.5), (1.0, 0.9, 0.0, 0.5)])


def _index(label: np.ndarray) -> np.ndarray:
    """0 nothing, 1 liver, 2 hard negative, 3 ignored (for the colour map)."""
    out = np.zeros(label.shape, np.uint8)
    out[label == 1], out[label == HARD_NEGATIVE_LABEL], out[label == IGNORE_LABEL] = 1, 2, 3
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pseudo", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    records = [json.loads(f.read_text()) for f in sorted(args.pseudo.glob("*.json"))]
    fig, axes = plt.subplots(len(records), 3, figsize=(15, 4.2 * len(records)), squeeze=False)
    for row, r in zip(axes, records, strict=True):
        ct, _ = to_canonical(read_volume(r["ct"]))
        lab, _ = to_canonical(read_volume(args.pseudo / f"{r['series']}.nii.gz"))
        img, idx = np.clip(ct.array_zyx, -160, 240), _index(np.asarray(lab.array_zyx))
        sx, _, sz = ct.spacing_xyz
        liver_y = int(np.argwhere(idx == 1)[:, 1].mean()) if (idx == 1).any() else img.shape[1] // 2
        hard = np.argwhere(idx == 2)
        hard_y = int(hard[:, 1].mean()) if len(hard) else liver_y
        hard_z = int(np.bincount(hard[:, 0]).argmax()) if len(hard) else int(np.argwhere(idx == 1)[:, 0].mean())
        views = [(img[::-1, liver_y], idx[::-1, liver_y], sz / sx, "coronal, liver"),
                 (img[::-1, hard_y], idx[::-1, hard_y], sz / sx, "coronal, hard negatives"),
                 (img[hard_z], idx[hard_z], 1.0, f"axial {hard_z}")]
        for ax, (im, m, aspect, title) in zip(row, views, strict=True):
            ax.imshow(im, cmap="gray", aspect=aspect)
            ax.imshow(m, cmap=COLOURS, vmin=0, vmax=3, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{r['series']}: {title}", fontsize=9)
            ax.axis("off")
        ml = r["label_ml"]
        row[0].set_title(f"{r['series']}: liver {ml['liver']:.0f} mL, hard negative {ml['hard_negative']:.0f}, "
                         f"ignored {ml['ignored']:.0f}", fontsize=9)
    fig.suptitle("pseudo-labels: liver green, hard negative red, ignored yellow")
    fig.tight_layout()
    fig.savefig(args.out, dpi=55)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
