"""Add a trained checkpoint to the model catalog that ships with MRISynthesis.

    python -m Training.export CHECKPOINT --id ID --title TITLE [--description TEXT] [--half]
        [--default] [--card Resources/Models/ID.md] [--resources Resources]
    python -m Training.export OLD.safetensors --upgrade-to NEW.safetensors

Copies the checkpoint (optionally with float16 weights: half the size, outputs within ~1e-3 of
float32, see the model card) to ``Resources/Models/ID.safetensors`` with the catalog id and title
written into its metadata, and adds or replaces the entry in ``Resources/Models.json`` with the
file's SHA-256 and size. ``--default`` makes it the default model of its direction (and clears
the flag on the others of that direction). Both files are written atomically.

The copy is written in the current checkpoint format. A checkpoint of an older format (whose
metadata has no hash, e.g. from a run started before format 2) is accepted here, because the
person exporting vouches for it; ``--upgrade-to NEW`` only re-saves such a file in the current
format (same weights and dtype), without touching the catalog.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from MRISynthesisLib.atomic import atomic_path
from MRISynthesisLib.catalog import CATALOG_NAME, resources_dir
from MRISynthesisLib.checkpoint import file_sha256, load_checkpoint, save_checkpoint, upgrade_checkpoint
from MRISynthesisLib.errors import MRISynthesisError


def export(checkpoint, model_id: str, title: str, description: str = "", half: bool = False,
           default: bool = False, card: str = "", resources: Path | None = None) -> dict:
    """Write the shipped copy and its catalog entry; returns the entry."""
    resources = Path(resources or resources_dir())
    model, metadata = load_checkpoint(checkpoint, trust_legacy_metadata=True)
    metadata.model_id, metadata.title = model_id, title
    metadata.description = description or metadata.description
    relative = Path("Models") / f"{model_id}.safetensors"
    target = save_checkpoint(resources / relative, model, metadata, half=half)
    entry = {"id": model_id, "title": title, "direction": metadata.direction, "file": relative.as_posix(),
             "sha256": file_sha256(target), "description": metadata.description, "default": bool(default),
             "size_mb": round(target.stat().st_size / 2 ** 20, 2), "architecture": metadata.architecture,
             "supports_uncertainty": metadata.architecture == "vae"}
    if card:
        entry["card"] = Path(card).as_posix()
    catalog_path = resources / CATALOG_NAME
    catalog = json.loads(catalog_path.read_text(encoding="utf-8")) if catalog_path.exists() else {"models": []}
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
    parser.add_argument("--id", help="catalog id (also the file name)")
    parser.add_argument("--title", help="title shown in the Slicer module and 'mrisynthesis models'")
    parser.add_argument("--description", default="", help="one paragraph for the catalog")
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    parser.add_argument("--default", action="store_true", help="make it the default model of its direction")
    parser.add_argument("--card", default="", help="path of its model card, relative to the Resources folder")
    parser.add_argument("--resources", default=None, help="Resources folder (default: the one the catalog uses)")
    args = parser.parse_args(argv)
    if args.upgrade_to is None and not (args.id and args.title):
        parser.error("--id and --title are required (or --upgrade-to NEW)")
    try:
        if args.upgrade_to is not None:
            target = upgrade_checkpoint(args.checkpoint, args.upgrade_to)
            print(f"wrote {target} (checkpoint format of this version; weights unchanged)")
            return 0
        entry = export(args.checkpoint, args.id, args.title, args.description, args.half, args.default, args.card,
                       args.resources)
    except MRISynthesisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
