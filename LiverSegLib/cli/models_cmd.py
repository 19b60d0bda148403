"""``liverseg models list|verify``: the model catalogue and the integrity of its weight files."""

from __future__ import annotations

import argparse
import json

from LiverSegLib.errors import InputError, ModelError

__all__ = ["add_parser", "run_list", "run_verify"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the available models or verify their weight files")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", parser_class=type(p))
    msub.required = True
    lp = msub.add_parser("list", help="list the models of the catalogue")
    lp.add_argument("--json", action="store_true", help="print the catalogue entries as JSON")
    lp.set_defaults(func=run_list)
    vp = msub.add_parser("verify", help="check every weight file's sha256 and that it loads without pickle")
    vp.add_argument("ids", nargs="*", help="model ids (default: all)")
    vp.set_defaults(func=run_verify)


def run_list(args: argparse.Namespace) -> int:
    from LiverSegLib.registry import load_registry

    registry = load_registry()
    if args.json:
        print(json.dumps([registry.raw(i) for i in registry.ids()], indent=2))
        return 0
    rows = [("id", "version", "stages", "lesions", "title")]
    for model_id in registry.ids():
        m = registry.get(model_id)
        stages = "coarse+fine" if m.fine else "single"
        rows.append((model_id + (" (default)" if model_id == registry.default_id else ""), m.version, stages,
                     "yes" if 2 in m.label_values() else "no", m.title))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from LiverSegLib.registry import load_registry
    from LiverSegLib.weights import load_checkpoint

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
    if failures:
        raise InputError(f"{len(failures)} weight file(s) failed verification: {', '.join(failures)}")
    return 0
