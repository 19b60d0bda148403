"""Write a large test CT for the memory benchmark: real slices stacked to 512 x 512 x N (default 1000).

The 20 real slices of the TotalSegmentator DICOM example (512 x 512, 0.98 mm) are repeated, mirrored every other
time so the stack is continuous, to N slices at 1 mm: a scan as long as a whole-body CT, with real HU values and a
liver in every block (so the liver box spans the whole scan, the worst case for the fine stage's memory).

Usage::

    python benchmarks/make_big_ct.py /tmp/big_ct.nrrd [--slices 1000]
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
    args = p.parse_args(argv)

    from LiverSegLib.data.samples import load_case
    from LiverSegLib.io import write_volume
    from LiverSegLib.pipeline.geometry import to_canonical

    ct, _ = load_case("ts_example_dicom")
    block, _ = to_canonical(ct)
    src = np.asarray(block.array_zyx)
    order = np.concatenate([np.arange(len(src)), np.arange(len(src))[::-1]])  # up, then back down: no jumps
    idx = np.resize(order, args.slices)
    array = np.ascontiguousarray(src[idx])
    volume = type(block)(array, (block.spacing_xyz[0], block.spacing_xyz[1], 1.0), block.origin_xyz,
                          block.direction, {})
    write_volume(volume, args.out, compress=False)
    print(f"wrote {args.out}: {array.shape[::-1]} voxels (x, y, z), {array.dtype}, {array.nbytes / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
