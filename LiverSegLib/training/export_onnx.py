"""Export a catalogue model's 2D/2.5D stages to ONNX for the OpenVINO / ONNX Runtime engines.

Each stage's torch checkpoint (sha256-verified) is traced once as ``softmax(network(x))`` with a dynamic batch and
slice size, and written beside the checkpoint as ``<checkpoint stem>.onnx``; its float32 tensors are stored as
float16 with a cast back (the shipped checkpoints hold float16 weights, so this halves the file without changing
what the engines compute, apart from batch-norm folding's own rounding). The stage's catalogue entry gets an
``onnx`` block: file, sha256, size multiple. 3D stages (DI2IN) keep torch, which runs them with MONAI's sliding
window.

Release step, after ``release_weights`` / ``release_di2in`` wrote the catalogue entry::

    python -m LiverSegLib.training.export_onnx han-liver [han-demo ...] [--catalogue Resources/models.json]

Needs the ``onnx`` package (``pip install -e .[dev]``); inference needs only the engine.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from LiverSegLib.config import OnnxExport, StageConfig
from LiverSegLib.pipeline.stage import StageModel
from LiverSegLib.weights import sha256_file

__all__ = ["export_stage", "export_catalogue_models", "OPSET"]

OPSET = 17


class _WithSoftmax(nn.Module):
    """The stage network followed by the softmax the predictor applies (one graph, so the engines fuse it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x).float(), dim=1)


def export_stage(stage: StageConfig, weights_path: Path, out_path: Path) -> OnnxExport:
    """Write ``out_path`` (ONNX) from a stage's checkpoint and return its catalogue block.

    Raises:
        ValueError: the stage's network is not 2D (3D networks stay on torch).
    """
    import onnx

    model = StageModel(stage, Path(weights_path), torch.device("cpu"))
    if model.spatial_dims != 2:
        raise ValueError(f"{stage.network.name} is a {model.spatial_dims}D network: only 2D/2.5D stages are exported")
    m = model.size_multiple
    example = torch.zeros(2, stage.context_slices, 2 * m, 3 * m)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with warnings.catch_warnings():  # the networks' input checks are traced as constants: expected, and harmless
        warnings.simplefilter("ignore")
        torch.onnx.export(_WithSoftmax(model.net).eval(), (example,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["slices"], output_names=["probabilities"],
                          dynamic_axes={"slices": {0: "batch", 2: "y", 3: "x"},
                                        "probabilities": {0: "batch", 2: "y", 3: "x"}})
    graph = onnx.load(str(tmp))
    _store_float16(graph)
    graph.producer_name = "LiverSeg"
    onnx.helper.set_model_props(graph, {"liverseg.source_sha256": stage.sha256,
                                        "liverseg.network": stage.network.name})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))
    tmp.replace(out_path)
    return OnnxExport(file=out_path.name, sha256=sha256_file(out_path), size_multiple=m)


def _store_float16(model) -> None:
    """Float32 initializers of more than 16 values stored as float16, each followed by a Cast to float32."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size <= 16:
            continue
        half = numpy_helper.from_array(values.astype(np.float16), init.name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_cast"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_catalogue_models(model_ids: list[str], catalogue: Path) -> dict[str, dict[str, OnnxExport]]:
    """Export every 2D stage of ``model_ids`` beside its checkpoint and record it in ``catalogue`` (in place)."""
    from LiverSegLib.config import ModelConfig

    data = json.loads(catalogue.read_text())
    weights_dir = catalogue.parent / "weights"
    done: dict[str, dict[str, OnnxExport]] = {}
    for entry in data["models"]:
        if entry["id"] not in model_ids:
            continue
        model = ModelConfig.from_dict(entry, weights_dir=str(weights_dir))
        for role, stage in (("coarse", model.coarse), ("fine", model.fine)):
            if stage is None or role not in entry["stages"]:
                continue
            weights = model.weight_path(stage.weights)
            try:
                export = export_stage(stage, weights, weights.with_suffix(".onnx"))
            except ValueError as exc:
                print(f"{entry['id']} {role}: {exc}")
                continue
            entry["stages"][role]["onnx"] = export.to_dict()
            done.setdefault(entry["id"], {})[role] = export
            print(f"{entry['id']} {role}: {export.file} sha256 {export.sha256[:12]}... "
                  f"({(weights_dir / export.file).stat().st_size / 1e6:.1f} MB)")
    missing = sorted(set(model_ids) - {m["id"] for m in data["models"]})
    if missing:
        raise SystemExit(f"not in {catalogue}: {', '.join(missing)}")
    catalogue.write_text(json.dumps(data, indent=2) + "\n")
    return done


def main(argv: list[str] | None = None) -> int:
    from LiverSegLib._paths import resources_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model ids of the catalogue")
    ap.add_argument("--catalogue", type=Path, default=resources_dir() / "models.json")
    args = ap.parse_args(argv)
    export_catalogue_models(args.models, args.catalogue)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
