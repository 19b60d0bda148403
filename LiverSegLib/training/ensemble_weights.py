"""Pack several checkpoints of one stage into one :class:`~LiverSegLib.networks.ensemble.MeanEnsemble` checkpoint.

The members must describe the same stage (network, classes, preprocessing); the result is an ordinary LiverSeg
checkpoint whose network is ``MeanEnsemble`` of that member network, whose state dict holds each member's tensors
under ``members.<i>.``, and whose metadata lists each member's file name, sha256 and training metadata. It loads with
``weights_only=True`` and is sha256-verified like any other stage file, and ``export_onnx`` exports it as one graph.

Usage::

    python -m LiverSegLib.training.ensemble_weights --out han_liver_coarse.pt run1/coarse.pt run2/coarse.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from LiverSegLib.errors import ModelError
from LiverSegLib.weights import load_checkpoint, save_checkpoint, sha256_file

__all__ = ["ensemble_network_spec", "combine_checkpoints", "main"]

_STAGE_KEYS = ("network", "classes", "preprocessing")


def ensemble_network_spec(member: dict, count: int) -> dict:
    """The ``network`` entry of a stage whose network is ``count`` members of ``member`` (name + kwargs)."""
    return {"name": "MeanEnsemble", "kwargs": {"member": {"name": member["name"],
                                                          "kwargs": dict(member.get("kwargs", {}))},
                                               "count": int(count)}}


def combine_checkpoints(paths: list[Path], out: Path) -> str:
    """Write the ensemble of the checkpoints ``paths`` to ``out`` (atomically) and return its sha256.

    Raises:
        ModelError: fewer than two members, a member that is itself an ensemble, or members made for different
            networks, classes or preprocessing.
    """
    if len(paths) < 2:
        raise ModelError(f"an ensemble needs at least 2 checkpoints, got {len(paths)}")
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]["config"]
    if first.get("network", {}).get("name") == "MeanEnsemble":
        raise ModelError(f"{Path(paths[0]).name} is already an ensemble; name its members instead")
    for p, c in zip(paths[1:], ckpts[1:], strict=True):
        for key in _STAGE_KEYS:
            if c["config"].get(key) != first.get(key):
                raise ModelError(f"{Path(p).name} was made for {key} {c['config'].get(key)}, but "
                                 f"{Path(paths[0]).name} for {first.get(key)}: members must describe the same stage")
    config = {**first, "network": ensemble_network_spec(first["network"], len(ckpts))}
    state = {f"members.{i}.{k}": v for i, c in enumerate(ckpts) for k, v in c["state_dict"].items()}
    members = [{"file": Path(p).name, "sha256": sha256_file(p), **c["metadata"]}
               for p, c in zip(paths, ckpts, strict=True)]
    return save_checkpoint(out, config, state, {"ensemble_of": members})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("members", nargs="+", type=Path)
    args = p.parse_args(argv)
    try:
        sha = combine_checkpoints(args.members, args.out)
    except ModelError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{args.out}: ensemble of {len(args.members)}, sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
