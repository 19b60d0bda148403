"""A pool of label-driven synthetic CTs on disk, tagged by the label map they came from.

Painting a synthetic CT (:func:`~LiverSegLib.training.synth_ct.synthesize_ct`) takes seconds, so the pool is made
once and shared by every leave-one-out fold: each entry records its ``source`` (the label map's case, e.g.
``ircad1.19`` or ``ts_example_ct``) and a fold drops every entry whose source is its held-out case. The donor liver
shapes (LiTS masks) come from patients that are none of the evaluation cases.

Entries are ``<source>-<k>.npz`` files (HU as int16, the organ map, the spacing, the painting facts), written
atomically; building again skips entries already there, so an interrupted build resumes.

Usage::

    python -m LiverSegLib.training.synth_pool --out $LIVERSEG_HOME/pool/coarse --grid coarse --per-source 3
    python -m LiverSegLib.training.synth_pool --out $LIVERSEG_HOME/pool/fine --grid native --per-source 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from LiverSegLib.pipeline.geometry import to_canonical
from LiverSegLib.training.synth_ct import SynthCTConfig, synthesize_ct
from LiverSegLib.types import Volume

__all__ = ["GRIDS", "map_sources", "donor_masks", "build_pool", "load_pool", "main"]

#: How each pool is painted: near the coarse stage's grid (fast; the stage resamples it as it would a real CT), or
#: at native CT resolution around the liver (for the fine stage, which works at native resolution on liver slices).
GRIDS: dict[str, dict] = {
    "coarse": {"inplane_spacing_mm": (1.4, 2.4), "slice_spacing_mm": (1.5, 5.0)},
    "native": {"inplane_spacing_mm": (0.6, 1.0), "slice_spacing_mm": (1.0, 5.0), "z_margin_mm": (5.0, 25.0),
               "fov_cut_probability": 0.0, "liver_margin_mm": 40.0},
}


def map_sources(shared: Path | None, include_ts: bool = True) -> dict[str, Callable[[], Volume]]:
    """Loaders of every multi-organ label map there is: the 3D-IRCADb mask sets and the TotalSegmentator example."""
    from LiverSegLib.training import mask_sources as ms

    loaders: dict[str, Callable[[], Volume]] = {}
    if shared is not None and (shared / "ircadb_masks").is_dir():
        for pid, path in sorted(ms.list_ircad_mask_sets(shared / "ircadb_masks").items()):
            loaders[pid] = (lambda p=path: ms.read_ircad_masks(p))
    if include_ts:
        def _ts() -> Volume:
            from LiverSegLib.data.samples import case_info, fetch_source, load_case

            ct, _ = load_case("ts_example_ct")
            info = case_info("ts_example_ct")
            root = fetch_source(info["source"]) / info["dir"]
            return ms.read_totalsegmentator_map(root / info["files"][1], ct=ct)
        loaders["ts_example_ct"] = _ts
    return loaders


#: Bank masks left out of transplants: lits-74 lies upside down in patient space (its left lobe below the right
#: lobe's bulk, the area profile of a liver reversed), found by the reader's orientation check.
SUSPECT_DONORS = frozenset({"lits-74"})


def donor_masks(shared: Path | None, limit: int | None = None) -> list[tuple[np.ndarray, tuple]]:
    """The LiTS liver-mask bank in canonical order, ``(mask, spacing_xyz)`` (empty without ``../shared``)."""
    from LiverSegLib.training import mask_sources as ms

    if shared is None or not (shared / "lits_liver_masks").is_dir():
        return []
    out = []
    for name, path in sorted(ms.list_lits_masks(shared / "lits_liver_masks").items())[:limit]:
        if name in SUSPECT_DONORS:
            continue
        vol, _ = to_canonical(ms.read_lits_mask(path))
        out.append((np.asarray(vol.array_zyx, np.uint8), tuple(vol.spacing_xyz)))
    return out


def build_pool(out_dir: Path, sources: dict[str, Callable[[], Volume]], per_source: int, grid: str,
               donors: list[tuple[np.ndarray, tuple]] | None = None, seed: int = 0, log=print,
               thorax_reach_mm: tuple[float, float] | None = None, shards: tuple[int, int] = (0, 1)) -> list[Path]:
    """Paint ``per_source`` synthetic CTs from every label map in ``sources`` into ``out_dir`` (resumable).

    ``thorax_reach_mm`` extends every map into the chest (lungs, heart) first (``SynthCTConfig.thorax_reach_mm``)
    and paints the heart's wall and blood pools (``heart_detail``). ``shards=(i, n)`` paints only every n-th map
    from the i-th (run n processes to paint in parallel; an entry does not depend on the others).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = replace(SynthCTConfig(), **GRIDS[grid], thorax_reach_mm=thorax_reach_mm,
                  heart_detail=thorax_reach_mm is not None)
    written = []
    for s_index, (name, load) in enumerate(sorted(sources.items())):
        if s_index % shards[1] != shards[0]:
            continue
        targets = [out_dir / f"{name}-{k}.npz" for k in range(per_source)]
        if all(t.is_file() for t in targets):
            written += targets
            continue
        organ_vol, _ = to_canonical(load())
        organs = np.asarray(organ_vol.array_zyx, np.uint8)
        for k, target in enumerate(targets):
            if target.is_file():
                written.append(target)
                continue
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, s_index, k, 7])
            hu, m, spacing, facts = synthesize_ct(organs, tuple(organ_vol.spacing_xyz), rng, cfg, donors)
            if grid == "native":  # the fine stage only trains on liver slices: keep those and a margin
                zs = np.nonzero(((m == 1) | (m == 2)).any(axis=(1, 2)))[0]
                if len(zs):
                    pad = int(np.ceil(15.0 / spacing[2]))
                    keep = slice(max(0, zs.min() - pad), zs.max() + pad + 1)
                    hu, m = hu[keep], m[keep]
            tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.npz")
            np.savez_compressed(tmp, hu=np.round(hu).astype(np.int16), organs=m, spacing_xyz=np.array(spacing),
                                facts=json.dumps({**facts, "source": name}, default=float))
            os.replace(tmp, target)
            written.append(target)
            log(f"{target.name}: {hu.shape} at {tuple(round(s, 2) for s in spacing)} mm, {facts['phase']}, "
                f"{time.perf_counter() - t0:.1f} s")
    return written


def load_pool(pool_dir: Path, exclude_sources: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, Volume,
                                                                                                     Volume, dict]]:
    """``(name, ct, organ_map, facts)`` of every pool entry whose source is not excluded, in name order."""
    out = []
    for path in sorted(Path(pool_dir).glob("*.npz")):
        if path.name.startswith("."):
            continue
        with np.load(path) as z:
            facts = json.loads(str(z["facts"]))
            if facts["source"] in exclude_sources:
                continue
            spacing = tuple(float(s) for s in z["spacing_xyz"])
            meta = {"source": facts["source"], "synthetic": True}
            ct = Volume(z["hu"], spacing, (0.0, 0.0, 0.0), np.eye(3), meta)
            out.append((path.stem, ct, ct.with_array(z["organs"], kind="label"), facts))
    return out


def main(argv: list[str] | None = None) -> int:
    from LiverSegLib.data.samples import shared_data_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--grid", choices=sorted(GRIDS), default="coarse")
    p.add_argument("--per-source", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ts", action="store_true", help="leave out the TotalSegmentator example's map")
    p.add_argument("--thorax", action="store_true",
                   help="extend the maps 50-110 mm above the liver dome with lungs, a heart and mediastinum (the "
                        "1.1.0 experiment; the shipped weights were trained without), with a detailed heart")
    p.add_argument("--shard", default="0/1", help="i/n: paint only maps i, i+n, ... (parallel painting)")
    args = p.parse_args(argv)
    i, sep, n = args.shard.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        p.error(f"--shard {args.shard!r}: expected i/n with 0 <= i < n, e.g. 0/2")
    shard = (int(i), int(n))
    shared = shared_data_dir()
    sources = map_sources(shared, include_ts=not args.no_ts)
    donors = donor_masks(shared)
    print(f"{len(sources)} label maps, {len(donors)} donor livers", flush=True)
    t0 = time.perf_counter()
    paths = build_pool(args.out, sources, args.per_source, args.grid, donors, args.seed,
                       log=lambda s: print(s, flush=True), thorax_reach_mm=(50.0, 110.0) if args.thorax else None,
                       shards=shard)
    print(f"{len(paths)} entries in {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
