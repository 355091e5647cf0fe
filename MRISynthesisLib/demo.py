"""The main job on embedded defaults: synthesize a T2w volume from a real T1w volume.

    python -m MRISynthesisLib.demo [T1.nii.gz] [--model ID|PATH] [--out-dir DIR]

Without an input it uses the ICBM 2009a T1w template that ships inside the nilearn wheel (install
the ``examples`` extra); the output volume and a PNG preview (input | synthetic) are written to
``--out-dir`` (default ``demo-output/``). Synthetic images are not for diagnosis.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .cli import main as cli_main
from .conventions import T1_TO_T2

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_t1_template() -> Path | None:
    """Path of the ICBM 2009a T1w template inside an installed nilearn (no import, no download)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE
    return path if path.is_file() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MRISynthesisLib.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="a T1w NIfTI volume (default: nilearn's ICBM 2009a T1w template)")
    parser.add_argument("--model", default=None, help="catalog id or checkpoint (default: the shipped T1->T2 model)")
    parser.add_argument("--out-dir", default="demo-output", help="folder for the outputs (default: demo-output)")
    args = parser.parse_args(argv)
    source = Path(args.input) if args.input else nilearn_t1_template()
    if source is None:
        print("error: no input given and nilearn (with its ICBM T1 template) is not installed; "
              "pip install nilearn, or pass a T1 file", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = source.name.split(".nii")[0]
    output = out_dir / f"{stem}_synthetic_T2.nii.gz"
    preview = out_dir / f"{stem}_synthetic_T2_preview.png"
    argv = ["synthesize", str(source), "-o", str(output), "--preview", str(preview), "--direction", T1_TO_T2]
    if args.model:
        argv += ["--model", args.model]
    code = cli_main(argv)
    if code == 0:
        print(f"input: {source}\nsynthetic T2: {output}\npreview: {preview}")
    return code


if __name__ == "__main__":
    sys.exit(main())
