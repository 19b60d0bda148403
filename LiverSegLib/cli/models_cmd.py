"""``liverseg models list|verify|import``: the model catalogue, its weight files, and adding trained models."""

from __future__ import annotations

import argparse
import json

from LiverSegLib.errors import InputError, ModelError

__all__ = ["add_parser", "run_list", "run_verify", "run_import"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the available models or verify their weight files")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", parser_class=type(p))
    msub.required = True
    lp = msub.add_parser("list", help="list the models of the catalogue")
    lp.add_argument("--json", action="store_true", help="print the catalogue entries as JSON")
    lp.set_defaults(func=run_list)
    vp = msub.add_parser("verify", help="check every weight file's sha256 (checkpoints and ONNX exports) and that "
                                        "each checkpoint loads without pickle")
    vp.add_argument("ids", nargs="*", help="model ids (default: all)")
    vp.set_defaults(func=run_verify)
    ip = msub.add_parser("import", help="add a trained checkpoint (e.g. from 'liverseg train') to your catalogue")
    ip.add_argument("checkpoint", type=str, metavar="CKPT", help="a LiverSeg checkpoint file")
    ip.add_argument("--id", required=True, dest="model_id", help="the model id to list it under")
    ip.add_argument("--title", help="a title for 'liverseg models list'")
    ip.add_argument("--overwrite", action="store_true", help="replace your model with the same id")
    ip.set_defaults(func=run_import)


def run_list(args: argparse.Namespace) -> int:
    from LiverSegLib.registry import load_registry

    registry = load_registry()
    if args.json:
        print(json.dumps([registry.raw(i) for i in registry.ids()], indent=2))
        return 0
    rows = [("id", "version", "stages", "lesions", "license", "title")]
    for model_id in registry.ids():
        m = registry.get(model_id)
        stages = "coarse+fine" if m.fine else "single"
        rows.append((model_id + (" (default)" if model_id == registry.default_id else ""), m.version, stages,
                     "yes" if 2 in m.label_values() else "no", m.license or "-", m.title))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from LiverSegLib.registry import load_registry
    from LiverSegLib.weights import load_checkpoint, verify_sha256

    registry = load_registry()
    ids = args.ids or registry.ids()
    failures = []
    for model_id in ids:
        model = registry.get(model_id)
        for role, stage in (("coarse", model.coarse), ("fine", model.fine)):
            if stage is None:
                continue
            path = registry.weight_path(model, stage.weights)
            try:
                load_checkpoint(path, stage.sha256)
                print(f"ok      {model_id} {role}: {path.name} sha256 {stage.sha256[:12]}...")
            except ModelError as exc:
                print(f"FAILED  {model_id} {role}: {exc}")
                failures.append(f"{model_id}/{role}")
            if stage.onnx is None:
                continue
            path = registry.weight_path(model, stage.onnx.file)
            try:
                verify_sha256(path, stage.onnx.sha256)
                print(f"ok      {model_id} {role} onnx: {path.name} sha256 {stage.onnx.sha256[:12]}...")
            except ModelError as exc:
                print(f"FAILED  {model_id} {role} onnx: {exc}")
                failures.append(f"{model_id}/{role}/onnx")
    if failures:
        raise InputError(f"{len(failures)} weight file(s) failed verification: {', '.join(failures)}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from LiverSegLib._paths import home_dir
    from LiverSegLib.model_import import import_checkpoint

    entry = import_checkpoint(args.checkpoint, args.model_id, overwrite=args.overwrite, title=args.title)
    stages = "coarse+fine" if "fine" in entry["stages"] else "single"
    print(f"imported {args.model_id} ({stages}, sha256 {entry['stages']['coarse']['sha256'][:12]}...) into "
          f"{home_dir() / 'models.json'}; use it with 'liverseg segment CT --model {args.model_id}'")
    return 0
