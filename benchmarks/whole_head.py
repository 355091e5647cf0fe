"""A real whole-head scan, end to end: synthetic T2 of the native TCGA-FG-6692 T1, with and without
automatic brain extraction, against the same patient's real T2.

    python benchmarks/whole_head.py [--model ID|PATH] [--out-dir DIR] [--figure PNG]

Needs ``../shared/data`` (raw/TCGA-FG-6692_native and paired/TCGA-FG-6692) and SimpleITK (the
``dev`` extra) for the rigid registrations. Steps, all on the native T1's grid:

1. reference brain mask: the skull-stripped T1 of the same patient (``paired/TCGA-FG-6692``,
   skull-stripped by the TCGA-LGG/BraTS pipeline, in atlas space) registered rigidly to the native
   T1 (Mattes mutual information, moments initialisation), its non-zero region resampled;
2. real T2: the native T2 (a separate series with another slice angulation) registered rigidly to
   the native T1 (mutual information, starting from the scanner's own coordinates) and resampled;
3. ``mrisynthesis synthesize`` of the native T1 with ``--brain-mask auto`` (extraction) and with
   ``--brain-mask none`` (the behaviour before extraction existed);
4. ``mrisynthesis evaluate`` of each against the real T2 inside the reference brain mask
   (percentile normalisation, data range 1, per volume), plus the Dice coefficient of the
   automatic mask against the reference mask;
5. a figure: native T1 | synthetic without extraction | synthetic with extraction | real T2.

It prints a Markdown table and the RAS matrices of both registrations (used by the tests in
``Testing/Python/test_brain_extraction.py``). To re-run with another model (e.g. the v2 defaults):
``python benchmarks/whole_head.py --model t1-to-t2-<id>``. Synthetic images are not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib.cli import main as mrisynthesis  # noqa: E402
from MRISynthesisLib.conventions import PERCENTILE_HIGH  # noqa: E402
from MRISynthesisLib.io import load_volume, save_volume  # noqa: E402
from MRISynthesisLib.orientation import to_canonical_slices  # noqa: E402

DATA = REPO.parent / "shared" / "data"
NATIVE = DATA / "raw" / "TCGA-FG-6692_native"
NATIVE_T1 = NATIVE / "T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz"
NATIVE_T2 = NATIVE / "MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz"
STRIPPED_T1 = DATA / "paired" / "TCGA-FG-6692" / "OtherEXampleFromTCIA_t1_bet.nii.gz"
FIGURE = REPO / "docs" / "figures" / "whole-head-tcga-fg-6692.png"

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rigid_register(fixed: Path, moving: Path, moving_mask_above_zero: bool = False, initial: str = "identity"):
    """Rigid (6 parameters) transform mapping ``fixed``'s physical points to ``moving``'s (SimpleITK).

    Mattes mutual information (32 bins, 20 % random samples, fixed seed), regular-step gradient
    descent, 3 levels (shrink 4/2/1, smoothing 2/1/0 mm). ``initial``: 'identity' (same scanner
    session) or 'moments' (centres of mass, e.g. an atlas-space volume). ``moving_mask_above_zero``
    restricts the metric to the moving image's positive voxels (a skull-stripped moving image)."""
    import SimpleITK as sitk

    fixed_image = sitk.ReadImage(str(fixed), sitk.sitkFloat32)
    moving_image = sitk.ReadImage(str(moving), sitk.sitkFloat32)
    if initial == "moments":
        start = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.MOMENTS)
    else:
        centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_image.GetSize()])
        start = sitk.Euler3DTransform(centre)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, 1)
    if moving_mask_above_zero:
        method.SetMetricMovingMask(sitk.Cast(moving_image > 0, sitk.sitkUInt8))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 300, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(start, inPlace=False)
    return method.Execute(fixed_image, moving_image)


def ras_matrix(transform) -> np.ndarray:
    """4x4 matrix of a SimpleITK affine-type transform, converted from LPS to RAS coordinates
    (fixed RAS point -> moving RAS point)."""
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in points])
    matrix = np.eye(4)
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    matrix[:3, 3] = mapped[0]
    flip = np.eye(4)
    flip[:3, :3] = _LPS_TO_RAS
    return flip @ matrix @ flip


def resample(moving_array: np.ndarray, moving_affine: np.ndarray, fixed_shape, fixed_affine: np.ndarray,
             fixed_to_moving_ras: np.ndarray, order: int = 1) -> np.ndarray:
    """``moving_array`` sampled on the fixed grid through ``fixed_to_moving_ras`` (scipy; 0 outside)."""
    from scipy import ndimage

    index_map = np.linalg.inv(moving_affine) @ fixed_to_moving_ras @ fixed_affine
    return ndimage.affine_transform(np.asarray(moving_array, dtype=np.float32), index_map[:3, :3],
                                    index_map[:3, 3], output_shape=tuple(fixed_shape), order=order, cval=0.0)


def reference_brain_mask(native_t1, stripped_t1, t1_to_stripped_ras: np.ndarray) -> np.ndarray:
    """The skull-stripped T1's non-zero region on the native T1's grid (linear, >= 0.5)."""
    fraction = resample((stripped_t1.array > 0).astype(np.float32), stripped_t1.affine, native_t1.shape,
                        native_t1.affine, t1_to_stripped_ras, order=1)
    return fraction >= 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _figure(path: Path, t1, without, with_extraction, real_t2, mask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = [to_canonical_slices(v.array, t1.affine)[0] for v in (t1, without, with_extraction, real_t2)]
    mask_stack = to_canonical_slices(mask, t1.affine)[0]
    per_slice = mask_stack.reshape(mask_stack.shape[0], -1).sum(1)
    slices = [int(np.argmax(per_slice)) + d for d in (-5, 0, 4)]
    titles = ["native T1 (whole head)", "synthetic T2,\nno extraction", "synthetic T2,\nautomatic extraction",
              "real T2 (registered)"]
    figure, axes = plt.subplots(len(slices), 4, figsize=(8.4, 2.3 * len(slices)), dpi=80)
    for row, k in enumerate(slices):
        for col, stack in enumerate(stacks):
            image = stack[k]
            inside = image[mask_stack[k]] if col in (0, 3) else image[image > 0]
            top = float(np.percentile(inside, PERCENTILE_HIGH)) if inside.size else 1.0
            axes[row, col].imshow(image, cmap="gray", vmin=0, vmax=top or 1.0)
            axes[row, col].axis("off")
            if row == 0:
                axes[row, col].set_title(titles[col], fontsize=9)
    figure.text(0.5, 0.005, "TCGA-FG-6692 (TCGA-LGG, TCIA, CC BY 3.0). Synthetic images are not for diagnosis.",
                ha="center", fontsize=7)
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _evaluate(pred: Path, ref: Path, mask: Path, json_path: Path) -> dict:
    if mrisynthesis(["evaluate", "--pred", str(pred), "--ref", str(ref), "--mask", str(mask),
                     "--json", str(json_path)]) != 0:
        raise SystemExit(f"evaluate failed for {pred}")
    return json.loads(json_path.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="catalog id or checkpoint (default: the shipped T1->T2 default)")
    parser.add_argument("--out-dir", default=None, help="keep the volumes here (default: a temporary folder)")
    parser.add_argument("--figure", default=str(FIGURE), help=f"figure path (default: {FIGURE.relative_to(REPO)})")
    args = parser.parse_args(argv)
    for path in (NATIVE_T1, NATIVE_T2, STRIPPED_T1):
        if not path.is_file():
            raise SystemExit(f"missing {path}: this benchmark needs ../shared/data")
    with tempfile.TemporaryDirectory() as temporary:
        out = Path(args.out_dir or temporary)
        out.mkdir(parents=True, exist_ok=True)
        t1, t2, stripped = load_volume(NATIVE_T1), load_volume(NATIVE_T2), load_volume(STRIPPED_T1)

        started = time.perf_counter()
        t1_to_stripped = ras_matrix(rigid_register(NATIVE_T1, STRIPPED_T1, moving_mask_above_zero=True,
                                                   initial="moments"))
        t1_to_t2 = ras_matrix(rigid_register(NATIVE_T1, NATIVE_T2))
        print(f"registrations: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        reference = reference_brain_mask(t1, stripped, t1_to_stripped)
        real_t2 = t1.with_array(resample(t2.array, t2.affine, t1.shape, t1.affine, t1_to_t2))
        save_volume(t1.with_array(reference.astype(np.float32)), out / "reference_brain_mask.nii.gz")
        save_volume(real_t2, out / "real_t2_on_t1.nii.gz")

        model = ["--model", args.model] if args.model else []
        rows = {}
        for label, choice in (("no extraction (--brain-mask none)", "none"),
                              ("automatic extraction (--brain-mask auto)", "auto")):
            synthetic = out / f"synthetic_t2_{choice}.nii.gz"
            used_mask = out / f"mask_used_{choice}.nii.gz"
            argv = ["synthesize", str(NATIVE_T1), "-o", str(synthetic), "--brain-mask", choice,
                    "--save-mask", str(used_mask), "--quiet"] + model
            started = time.perf_counter()
            if mrisynthesis(argv) != 0:
                raise SystemExit(f"synthesize failed: {' '.join(argv)}")
            seconds = time.perf_counter() - started
            metrics = _evaluate(synthetic, out / "real_t2_on_t1.nii.gz", out / "reference_brain_mask.nii.gz",
                                out / f"metrics_{choice}.json")
            rows[choice] = dict(label=label, seconds=seconds, metrics=metrics,
                                dice=dice(load_volume(used_mask).array > 0, reference))

        _figure(Path(args.figure), t1, load_volume(out / "synthetic_t2_none.nii.gz"),
                load_volume(out / "synthetic_t2_auto.nii.gz"), real_t2, reference)

    np.set_printoptions(precision=6, suppress=True)
    print("native T1 -> skull-stripped T1 (RAS, fixed -> moving):\n" + repr(t1_to_stripped))
    print("native T1 -> native T2 (RAS, fixed -> moving):\n" + repr(t1_to_t2))
    print(f"\nnative TCGA-FG-6692 T1 -> T2, model {args.model or 'default'}; inside the reference brain mask "
          f"({int(reference.sum())} voxels), percentile-normalised, data range 1:\n")
    print("| brain mask | MAE | PSNR (dB) | SSIM | Dice of the mask used vs reference | synthesize time (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows.values():
        m = row["metrics"]
        print(f"| {row['label']} | {m['mae']:.3f} | {m['psnr']:.2f} | {m['ssim']:.3f} | {row['dice']:.3f} | "
              f"{row['seconds']:.0f} |")
    print(f"\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
