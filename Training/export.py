"""Add a trained checkpoint to a model catalog: by default the user's own (never the checkout's).

    python -m Training.export CHECKPOINT --id ID [--title TITLE] [--description TEXT] [--half]
        [--default] [--card PATH] [--resources FOLDER]
    python -m Training.export OLD.safetensors --upgrade-to NEW.safetensors

Copies the checkpoint (optionally with float16 weights: half the size, outputs within ~1e-3 of
float32, see the model cards) to ``<folder>/Models/ID.safetensors`` with the catalog id and title
written into its metadata, and adds or replaces the entry in ``<folder>/Models.json`` with the
file's SHA-256 and size. ``<folder>`` is the user's own model folder
(:func:`MRISynthesisLib.catalog.user_models_dir`; ``mrisynthesis models`` prints it), so
``mrisynthesis synthesize --model ID`` and the Slicer module find the model and the installation
stays as it shipped; ``--resources FOLDER`` writes to another catalog folder instead (maintainers
ship a model with ``--resources Resources``). ``--default`` makes it the default model of its
direction in that catalog (a user's default wins over the shipped one). Both files are written
atomically. An id of a shipped model is refused in the user's catalog.

The copy is written in the current checkpoint format. A checkpoint of an older format (whose
metadata has no hash, e.g. from a run started before format 2) is accepted here, because the
person exporting vouches for it; ``--upgrade-to NEW`` only re-saves such a file in the current
format (same weights and dtype), without touching any catalog.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from MRISynthesisLib.atomic import atomic_path
from MRISynthesisLib.catalog import CATALOG_NAME, list_models, read_catalog_file, resources_dir, user_models_dir
from MRISynthesisLib.checkpoint import file_sha256, load_checkpoint, save_checkpoint, upgrade_checkpoint
from MRISynthesisLib.cli import exit_status
from MRISynthesisLib.errors import InputError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def export(checkpoint, model_id: str, title: str = "", description: str = "", half: bool = False,
           default: bool = False, card: str = "", resources: Path | None = None) -> dict:
    """Write the copy and its catalog entry into ``resources`` (default: the user's model folder);
    returns the entry."""
    if not _ID.match(model_id or "") or model_id.endswith(".safetensors"):
        raise InputError(f"--id {model_id!r} must be a plain name of letters, digits, '.', '_' and '-' "
                         "(it is also the file name)")
    resources = Path(resources) if resources is not None else user_models_dir()
    shipped = resources_dir()
    if resources.resolve() != shipped.resolve() and model_id in {e.id for e in list_models(None, shipped)}:
        raise InputError(f"--id {model_id} is the id of a shipped model; choose another id for your model")
    catalog_path = resources / CATALOG_NAME
    catalog = read_catalog_file(catalog_path)  # a malformed catalog is refused before anything is written
    model, metadata = load_checkpoint(checkpoint, trust_legacy_metadata=True)
    metadata.model_id, metadata.title = model_id, title or model_id
    metadata.description = description or metadata.description
    relative = Path("Models") / f"{model_id}.safetensors"
    (resources / "Models").mkdir(parents=True, exist_ok=True)
    target = save_checkpoint(resources / relative, model, metadata, half=half)
    entry = {"id": model_id, "title": metadata.title, "direction": metadata.direction, "file": relative.as_posix(),
             "sha256": file_sha256(target), "description": metadata.description, "default": bool(default),
             "size_mb": round(target.stat().st_size / 2 ** 20, 2), "architecture": metadata.architecture,
             "supports_uncertainty": metadata.architecture == "vae"}
    if card:
        entry["card"] = Path(card).as_posix()
    models = [m for m in catalog.get("models", []) if m.get("id") != model_id]
    if default:
        for other in models:
            if other.get("direction") == metadata.direction:
                other["default"] = False
    models.append(entry)
    catalog["models"] = sorted(models, key=lambda m: (m["direction"], not m.get("default", False), m["id"]))
    with atomic_path(catalog_path) as tmp:
        Path(tmp).write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m Training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="trained checkpoint (.safetensors), e.g. runs/NAME/checkpoints/best-t1-to-t2.safetensors")
    parser.add_argument("--upgrade-to", metavar="NEW", default=None,
                        help="only re-save CHECKPOINT (an older format you trust) in the current format as NEW")
    parser.add_argument("--id", help="catalog id (also the file name); 'synthesize --model ID' uses it")
    parser.add_argument("--title", default="", help="title shown in the Slicer module and 'mrisynthesis models' "
                        "(default: the id)")
    parser.add_argument("--description", default="", help="one paragraph for the catalog")
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    parser.add_argument("--default", action="store_true", help="make it the default model of its direction")
    parser.add_argument("--card", default="", help="path of its model card, relative to the catalog folder")
    parser.add_argument("--resources", default=None, metavar="FOLDER",
                        help=f"catalog folder to write to (default: your own models, {user_models_dir()}; "
                             "maintainers shipping a model: Resources)")
    args = parser.parse_args(argv)
    if args.upgrade_to is None and not args.id:
        parser.error("--id is required (or --upgrade-to NEW)")
    return exit_status(_export, args)


def _export(args) -> int:
    if args.upgrade_to is not None:
        target = upgrade_checkpoint(args.checkpoint, args.upgrade_to)
        print(f"wrote {target} (checkpoint format of this version; weights unchanged)")
        return 0
    entry = export(args.checkpoint, args.id, args.title, args.description, args.half, args.default, args.card,
                   args.resources)
    print(json.dumps(entry, indent=2))
    folder = Path(args.resources) if args.resources else user_models_dir()
    print(f"added to the catalog {folder / CATALOG_NAME}; use it with: mrisynthesis synthesize IN -o OUT "
          f"--model {args.id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
