"""Gallery of label-driven synthetic CTs beside real CT slices, to judge the synthesis by eye.

Top row: real CTs (3D-IRCADb patient 19, the TotalSegmentator example, LiTS 117, an HCC-TACE series; liver outline
from the manual or reference label where there is one). Other rows: entries of the synthetic pools (coarse grid and
native grid), each at the axial slice through the middle of its liver, with the liver (green) and lesion (red)
outlines of the label it trains on. All in the abdominal window [-160, 240] HU, shown radiologically (patient's right
on the screen's left).

Usage::

    python benchmarks/synth_ct_gallery.py --pool $LIVERSEG_HOME/pool --out benchmarks/results/synth_ct_gallery.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from LiverSegLib.pipeline.geometry import to_canonical  # noqa: E402
from LiverSegLib.training.synth_pool import load_pool  # noqa: E402


def _mid_liver_slice(label: np.ndarray) -> int:
    zs = np.nonzero(((label == 1) | (label == 2)).any(axis=(1, 2)))[0]
    return int(np.median(zs)) if len(zs) else label.shape[0] // 2


def _show(ax, image: np.ndarray, label: np.ndarray | None, title: str, spacing_yx: tuple[float, float]) -> None:
    # canonical x runs toward the patient's left: radiological display puts it on the screen's right, as stored
    ax.imshow(image, cmap="gray", vmin=-160, vmax=240, aspect=spacing_yx[0] / spacing_yx[1])
    if label is not None:
        for value, colour in ((1, "lime"), (2, "red")):
            mask = label == value if value == 2 else (label == 1) | (label == 2)
            if mask.any():
                ax.contour(mask, [0.5], colors=colour, linewidths=0.6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _real_panels() -> list[tuple[np.ndarray, np.ndarray | None, str, tuple[float, float]]]:
    from LiverSegLib.data.samples import load_case, shared_data_dir

    panels = []
    for name in ("ircadb1_19", "ts_example_ct", "lits117"):
        try:
            ct, label = load_case(name)
        except Exception as exc:  # noqa: BLE001 - shared-only cases are absent on a user's machine
            print(f"skipping {name}: {exc}")
            continue
        ct, _ = to_canonical(ct)
        label, _ = to_canonical(label)
        z = _mid_liver_slice(np.asarray(label.array_zyx))
        panels.append((np.asarray(ct.array_zyx[z]), np.asarray(label.array_zyx[z]), f"REAL {name}",
                       (ct.spacing_xyz[1], ct.spacing_xyz[0])))
    shared = shared_data_dir()
    if shared is not None and (shared / "hcc_tace_unlabelled").is_dir():
        from LiverSegLib.training.mask_sources import list_unlabelled_series, read_unlabelled

        for path in list_unlabelled_series(shared / "hcc_tace_unlabelled")[:2]:
            ct, _ = to_canonical(read_unlabelled(path))
            z = int(ct.array_zyx.shape[0] * 0.62)  # upper abdomen in these trunk scans
            panels.append((np.asarray(ct.array_zyx[z]), None, f"REAL {path.name.split('.')[0]} (no label)",
                           (ct.spacing_xyz[1], ct.spacing_xyz[0])))
    return panels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=Path, required=True, help="pool root holding coarse/ and native/")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/synth_ct_gallery.png"))
    p.add_argument("--per-grid", type=int, default=5, help="synthetic panels per pool")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    panels = _real_panels()
    n_real = len(panels)
    rng = np.random.default_rng(args.seed)
    for grid in ("coarse", "native"):
        entries = load_pool(args.pool / grid) if (args.pool / grid).is_dir() else []
        for k in rng.permutation(len(entries))[: args.per_grid]:
            name, ct, organs, facts = entries[int(k)]
            lab = np.asarray(organs.array_zyx)
            z = _mid_liver_slice(lab)
            title = (f"SYNTH {grid} {name}\n{facts['phase']}, lesions {facts['lesion_kind']}, "
                     f"{ct.spacing_xyz[0]:.2f}x{ct.spacing_xyz[2]:.1f} mm" + (", transplant" if facts.get(
                         "transplant") else ""))
            panels.append((np.asarray(ct.array_zyx[z]), lab[z], title, (ct.spacing_xyz[1], ct.spacing_xyz[0])))
    cols = 5
    rows = 1 + int(np.ceil((len(panels) - n_real) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for i, panel in enumerate(panels[:n_real][:cols]):
        _show(axes[0, i], *panel)
    for i, panel in enumerate(panels[n_real:]):
        _show(axes[1 + i // cols, i % cols], *panel)
    fig.suptitle("Real CT (top row) and label-driven synthetic CT (below), window [-160, 240] HU", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out} ({len(panels)} panels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
