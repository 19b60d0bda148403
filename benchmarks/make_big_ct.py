"""Write a large test CT for the memory benchmark: real slices stacked to 512 x 512 x N (default 1000).

The 20 real slices of the TotalSegmentator DICOM example (512 x 512, 0.98 mm) are repeated, mirrored every other
time so the stack is continuous, to N slices at 1 mm: a scan as long as a whole-body CT, with real HU values and a
liver in every block (so the liver box spans the whole scan, the worst case for the fine stage's memory).

``--source`` takes the slices of another CT instead (a sample case name or a file, e.g. 3D-IRCADb patient 19 for a
512 x 512 x 300 stack at its own 4 mm: a 1.2 m scan with a liver every 124 slices), ``--z-spacing`` its slice
spacing (default 1 mm; ``source`` keeps the source's). ``--source phantom`` needs no file at all: a synthetic
512 x 512 x 48 abdomen (LiverSegLib's phantom, 0.8 mm in-plane) stacked the same way, for a machine that has no
sample CTs (the GPU machine has no network).

Usage::

    python benchmarks/make_big_ct.py /tmp/big_ct.nrrd [--slices 1000] [--source ircadb1_19] [--z-spacing source]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output file (.nrrd, .nii.gz, .mha)")
    p.add_argument("--slices", type=int, default=1000)
    p.add_argument("--source", default="ts_example_dicom",
                   help="sample case, CT file or 'phantom' (default ts_example_dicom)")
    p.add_argument("--z-spacing", default="1.0", help="slice spacing in mm of the stack, or 'source' (default 1.0)")
    args = p.parse_args(argv)

    from LiverSegLib.data.samples import load_case
    from LiverSegLib.io import read_volume, write_volume
    from LiverSegLib.pipeline.geometry import to_canonical

    if args.source == "phantom":
        from LiverSegLib.data.phantoms import make_phantom

        ct = make_phantom((48, 512, 512), (0.8, 0.8, 2.5), seed=11)[0]
    else:
        ct = read_volume(args.source) if Path(args.source).exists() else load_case(args.source)[0]
    block, _ = to_canonical(ct)
    src = np.asarray(block.array_zyx)
    order = np.concatenate([np.arange(len(src)), np.arange(len(src))[::-1]])  # up, then back down: no jumps
    idx = np.resize(order, args.slices)
    array = np.ascontiguousarray(src[idx])
    dz = block.spacing_xyz[2] if args.z_spacing == "source" else float(args.z_spacing)
    volume = type(block)(array, (block.spacing_xyz[0], block.spacing_xyz[1], dz), block.origin_xyz,
                          block.direction, {})
    write_volume(volume, args.out, compress=False)
    print(f"wrote {args.out}: {array.shape[::-1]} voxels (x, y, z), {array.dtype}, {array.nbytes / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
