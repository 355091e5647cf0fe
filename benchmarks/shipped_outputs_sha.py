"""Fingerprint the shipped models' outputs: sha256 of the synthesized arrays.

Runs ``mrisynthesis synthesize`` (the real command line, in a subprocess) with the shipped models on
one real subject and prints one line per output with the sha256 of its voxel array and header
fields. Run it before and after a refactor and compare the two JSON files; identical hashes mean
bit-identical outputs.

    python benchmarks/shipped_outputs_sha.py --data ../shared/data/paired/MSLUB-patient19 \
        --json before.json

Needs real data (not in the repository); fp32 and the default precision are both fingerprinted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]

# (input contrast file prefix, model id)
RUNS = [
    ("T1", "t1-to-t2-resunet-v4"),
    ("T2", "t2-to-t1-resunet-v2"),
    ("T2", "t2-to-t1-unet-l1-v1"),
]


def array_sha256(path: Path) -> dict:
    image = nib.load(str(path))
    data = np.ascontiguousarray(np.asanyarray(image.dataobj))
    return {
        "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
        "dtype": str(data.dtype),
        "shape": list(data.shape),
        "affine_sha256": hashlib.sha256(np.ascontiguousarray(image.affine).tobytes()).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="subject folder with T1_*.nii.gz and T2_*.nii.gz")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--precision", nargs="+", default=["fp32", "auto"])
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for contrast, model in RUNS:
            source = sorted(args.data.glob(f"{contrast}_*.nii*"))[0]
            for precision in args.precision:
                output = Path(tmp) / f"{model}-{precision}.nii.gz"
                command = [sys.executable, "-m", "MRISynthesisLib", "synthesize", str(source), "-o", str(output),
                           "--model", model, "--device", "cpu", "--precision", precision, "--quiet"]
                subprocess.run(command, cwd=REPO, check=True)
                key = f"{model} {precision}"
                results[key] = array_sha256(output)
                print(key, results[key]["sha256"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
