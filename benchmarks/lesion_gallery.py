"""Picture the synthetic lesions of :mod:`LiverSegLib.training.synth_lesions` on a real (or phantom) liver.

    .venv/bin/python benchmarks/lesion_gallery.py --out benchmarks/results/lesion_gallery.png \
        [--case ts_example_ct|lits117|phantom] [--seed 0] [--n 8]

For each of ``n`` examples (example ``m`` uses seed ``seed + m``) the script inserts lesions with the default
:class:`LesionSynthesisConfig`, finds the largest new lesion and shows the axial slice through its centre, windowed
to [-160, 240] HU, before (left) and after (right), the new lesion outlined in yellow on the right. Slices are shown
in the radiological convention (patient's right on the picture's left, anterior at the top), cropped around the
liver, with square pixels in mm. The real cases come from :func:`LiverSegLib.data.samples.load_case` (fetched on
first use); ``phantom`` needs no download. Not part of the library or the tests; needs matplotlib.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from LiverSegLib.data.phantoms import make_phantom  # noqa: E402
from LiverSegLib.data.samples import load_case  # noqa: E402
from LiverSegLib.pipeline.geometry import to_canonical  # noqa: E402
from LiverSegLib.training.synth_lesions import LesionSynthesisConfig, synthesize_lesions  # noqa: E402
from LiverSegLib.types import Volume  # noqa: E402

WINDOW = (-160.0, 240.0)
PAIRS_PER_ROW = 4


def load(case: str) -> tuple[Volume, Volume]:
    """The CT and its liver label in canonical axial LPS order (``[z, y posterior, x left]``)."""
    if case == "phantom":
        ct, lab = make_phantom((48, 128, 128), spacing_xyz=(1.2, 1.2, 2.5), seed=3, n_lesions=(0, 0))
    else:
        ct, lab = load_case(case)
    return to_canonical(ct)[0], to_canonical(lab)[0]


def liver_crop(label_slice: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Rows and columns around the liver in one slice (the whole slice when it holds no liver)."""
    rows, cols = np.nonzero(label_slice > 0)
    if not len(rows):
        return slice(None), slice(None)
    ny, nx = label_slice.shape
    return (slice(max(rows.min() - pad, 0), min(rows.max() + pad + 1, ny)),
            slice(max(cols.min() - pad, 0), min(cols.max() + pad + 1, nx)))


def render(case: str, out: Path, seed: int, n: int) -> Path:
    """Draw the gallery PNG at ``out`` and return its path."""
    ct, lab = load(case)
    image, label = ct.array_zyx.astype(np.float32), lab.array_zyx
    cfg = LesionSynthesisConfig()
    sx, sy = ct.spacing_xyz[0], ct.spacing_xyz[1]
    rows = -(-n // PAIRS_PER_ROW)
    cols = 2 * min(n, PAIRS_PER_ROW)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows + 1.0), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for m in range(n):
        new_img, new_lab = synthesize_lesions(image, label, ct.spacing_xyz, cfg, np.random.default_rng(seed + m))
        new = (new_lab == 2) & (label != 2)
        comps, count = ndimage.label(new)
        ax_before, ax_after = axes[m // PAIRS_PER_ROW, 2 * (m % PAIRS_PER_ROW)], axes[m // PAIRS_PER_ROW,
                                                                                        2 * (m % PAIRS_PER_ROW) + 1]
        if not count:
            ax_before.set_title(f"seed {seed + m}: no lesion", fontsize=8)
            continue
        sizes = np.bincount(comps.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        z = int(round(ndimage.center_of_mass(comps == biggest)[0]))
        rows_s, cols_s = liver_crop(label[z], pad=int(round(15 / sy)))
        extent = (0, (cols_s.indices(label.shape[2])[1] - cols_s.indices(label.shape[2])[0]) * sx,
                  (rows_s.indices(label.shape[1])[1] - rows_s.indices(label.shape[1])[0]) * sy, 0)
        for ax, pic in ((ax_before, image), (ax_after, new_img)):
            ax.imshow(pic[z][rows_s, cols_s], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], extent=extent,
                      interpolation="nearest")
        ny, nx = new[z][rows_s, cols_s].shape
        xs, ys = (np.arange(nx) + 0.5) * sx, (np.arange(ny) + 0.5) * sy
        ax_after.contour(xs, ys, new[z][rows_s, cols_s].astype(float), levels=[0.5], colors="yellow",
                         linewidths=0.8)
        volume_ml = float(sizes.sum()) * float(np.prod(ct.spacing_xyz)) / 1000.0
        ax_before.set_title(f"seed {seed + m}: original, z={z}", fontsize=8)
        ax_after.set_title(f"{count} new lesion(s), {volume_ml:.1f} ml", fontsize=8)
    settings = ", ".join(f"{k}={v}" for k, v in asdict(cfg).items())
    fig.suptitle(f"Synthetic lesions on {case} (seeds {seed}..{seed + n - 1}, window {WINDOW[0]:g}..{WINDOW[1]:g} HU)"
                 f"\n" + "\n".join(textwrap.wrap(settings, 170)), fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lesion_gallery.png")
    parser.add_argument("--case", default="ts_example_ct", choices=["ts_example_ct", "lits117", "phantom"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    print(render(args.case, args.out, args.seed, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
