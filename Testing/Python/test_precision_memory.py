"""Inference precision (auto/fp32/bf16/fp16) and the memory-lean synthesis path.

The slab-wise path must give exactly what the whole-volume path gave (same arithmetic, done per
batch); bf16 must stay close to fp32; peak memory must stay near input + output.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from phantoms import affine_for, head_phantom

from MRISynthesisLib import cli, device as device_module
from MRISynthesisLib.device import Precision, resolve_precision
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.orientation import from_canonical_slices, to_canonical_slices
from MRISynthesisLib.preprocessing import (SliceGeometry, brain_mask, foreground_slices, gather_context,
                                           normalise_stack)
from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.volume import Volume

from shared_folder import REPO


class FakeDevice:
    def __init__(self, kind):
        self.type = kind


# -- precision choice ---------------------------------------------------------------------------

@pytest.mark.parametrize("native, expected", [(True, ("bf16", torch.bfloat16, True)), (False, ("fp32", None, False))])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    p = resolve_precision("auto", torch.device("cpu"))
    assert (p.name, p.dtype, p.channels_last) == expected


@pytest.mark.parametrize("bf16_gpu, expected", [(True, ("bf16", torch.bfloat16)), (False, ("fp16", torch.float16))])
def test_auto_precision_on_cuda_is_half_precision_without_channels_last(monkeypatch, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    p = resolve_precision("auto", FakeDevice("cuda"))
    assert (p.name, p.dtype, p.channels_last) == (*expected, False)
    if not bf16_gpu:
        with pytest.raises(InputError, match="does not support bfloat16"):
            resolve_precision("bf16", FakeDevice("cuda"))


def test_auto_precision_on_mps_is_fp32_and_explicit_choices_are_honoured(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", FakeDevice("mps")).name == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")).dtype is None
    half = resolve_precision("fp16", torch.device("cpu"))
    assert (half.name, half.dtype, half.channels_last) == ("fp16", torch.float16, True)
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))


def test_native_bf16_detection_reads_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", None, raising=False)  # force the /proc path
    monkeypatch.setattr(device_module, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert device_module.cpu_has_native_bf16() == torch.backends.mkldnn.is_available()
    monkeypatch.setattr(device_module, "_cpuinfo_flags", lambda: {"avx2", "avx512f"})
    assert device_module.cpu_has_native_bf16() is False


def test_mixed_precision_false_forces_fp32_whatever_precision_says(tiny_unet_checkpoint):
    synthesizer = Synthesizer(tiny_unet_checkpoint, device="cpu", precision="bf16", mixed_precision=False)
    assert synthesizer.precision.name == "fp32" and synthesizer.precision.dtype is None


def test_bf16_synthesis_is_close_to_fp32_and_uses_channels_last(tiny_unet_checkpoint):
    volume = Volume(head_phantom((30, 34, 12)), affine_for("RAS", spacing=(2, 2, 2)))
    fp32 = Synthesizer(tiny_unet_checkpoint, device="cpu", precision="fp32")
    bf16 = Synthesizer(tiny_unet_checkpoint, device="cpu", precision="bf16")
    assert bf16.precision.describe() == "bf16 + channels_last"
    first_conv = next(p for p in bf16.model.parameters() if p.ndim == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    a, b = fp32.synthesize(volume).array, bf16.synthesize(volume).array
    inside = volume.array > 0
    assert b.dtype == np.float32 and np.all(b[~inside] == 0)
    difference = np.abs(a - b)[inside]
    assert 0 < difference.max() < 0.05  # bf16 really ran, and stayed close (8-bit mantissa)
    assert difference.mean() < 0.005


def test_cli_precision_option(tmp_path, tiny_unet_checkpoint):
    import nibabel as nib

    source = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(head_phantom((30, 34, 8)), affine_for("RAS", spacing=(2, 2, 2))), source)
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.nii.gz"
        assert cli.main(["synthesize", str(source), "-o", str(out), "--model", str(tiny_unet_checkpoint),
                         "--device", "cpu", "--precision", precision, "--quiet"]) == 0
        outputs[precision] = np.asarray(nib.load(out).dataobj)
    assert 0 < np.abs(outputs["fp32"] - outputs["bf16"]).max() < 0.05
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synthesize", str(source), "-o", str(tmp_path / "x.nii.gz"), "--precision", "fp8"])
    assert exit_info.value.code == 2


# -- slab-wise path == whole-volume path --------------------------------------------------------

def whole_volume_reference(synthesizer, volume):
    """Today's (before the memory work) whole-volume algorithm, written out with the public pieces."""
    stack, transform = to_canonical_slices(volume.array, volume.affine)
    model_input, mask_stack = normalise_stack(stack)
    geometry = SliceGeometry(*stack.shape[1:], transform.canonical_spacing[1:], synthesizer.metadata.slice_size,
                             synthesizer.metadata.pixel_spacing_mm)
    out = np.zeros(stack.shape, np.float32)
    indices = foreground_slices(mask_stack)
    context = synthesizer.metadata.context_slices
    with torch.inference_mode():
        for start in range(0, len(indices), synthesizer.batch_size):
            batch = indices[start:start + synthesizer.batch_size]
            x = geometry.to_model(torch.from_numpy(gather_context(model_input, batch, context)))
            y = (geometry.from_model(synthesizer.model(x))[:, 0] + 1.0) * 0.5
            out[batch] = y.clamp_(0.0, 1.0).numpy()
    out *= mask_stack
    return from_canonical_slices(out, transform)


@pytest.mark.parametrize("axcodes, zero_background", [("RAS", True), ("PSL", False), ("LIA", True)])
def test_slab_wise_synthesis_is_bit_identical_to_the_whole_volume_path(tiny_unet_checkpoint, axcodes,
                                                                       zero_background):
    array = head_phantom((34, 30, 23), seed=3)
    if not zero_background:  # a raw head: noisy positive background, Otsu mask path
        array = array + np.random.default_rng(1).random(array.shape, dtype=np.float32) * 5 + 1
    volume = Volume(array, affine_for(axcodes, spacing=(2, 2.2, 2.5)))
    before = array.copy()
    synthesizer = Synthesizer(tiny_unet_checkpoint, device="cpu", batch_size=3, precision="fp32")
    result = synthesizer.synthesize(volume).array
    assert np.array_equal(result, whole_volume_reference(synthesizer, volume))
    assert result.flags.c_contiguous and np.array_equal(volume.array, before)


@pytest.mark.parametrize("dtype, zero_background", [(np.int16, True), (np.uint16, False), (np.uint8, True)])
def test_integer_input_gives_the_float32_result_without_converting_the_volume(tiny_unet_checkpoint, dtype,
                                                                             zero_background):
    """An int16 volume (as scanners store it) is synthesised in its own type, batch by batch: the
    same output and input check as the same values in float32 (issue 26: half the input memory)."""
    array = head_phantom((34, 30, 23), seed=4)
    if not zero_background:  # a raw head: the Otsu threshold is compared with integers
        array = array + np.random.default_rng(2).random(array.shape, dtype=np.float32) * 5 + 1
    stored = np.clip(np.round(array * 1.3), 0, np.iinfo(dtype).max).astype(dtype)
    affine = affine_for("PSL", spacing=(2, 2.2, 2.5))
    synthesizer = Synthesizer(tiny_unet_checkpoint, device="cpu", batch_size=5, precision="fp32")
    as_float = synthesizer.synthesize(Volume(stored.astype(np.float32), affine))
    as_stored = synthesizer.synthesize(Volume(stored, affine))
    assert np.array_equal(as_stored.array, as_float.array)
    assert as_stored.meta["input_check"] == as_float.meta["input_check"]


def test_cpu_engines_split_a_batch_into_calls_of_a_few_slices_with_the_same_result(tiny_unet_checkpoint,
                                                                                   monkeypatch):
    from MRISynthesisLib import synthesis

    volume = Volume(head_phantom((30, 28, 21), seed=5), affine_for("RAS", spacing=(2, 2, 2)))
    synthesizer = Synthesizer(tiny_unet_checkpoint, device="cpu", batch_size=8, precision="fp32", engine="torch")

    class Counting:  # the torch engine, counting the slices of each call
        name = "torch"

        def __init__(self, engine):
            self.engine, self.calls = engine, []

        def __call__(self, x):
            self.calls.append(len(x))
            return self.engine(x)

    synthesizer.engine = counting = Counting(synthesizer.engine)
    split = synthesizer.synthesize(volume).array
    assert max(counting.calls) == synthesis.CPU_SLICES_PER_CALL["torch"] < 8
    monkeypatch.setattr(synthesis, "CPU_SLICES_PER_CALL", {})
    counting.calls.clear()
    assert np.array_equal(split, synthesizer.synthesize(volume).array) and max(counting.calls) == 8


def test_integer_nifti_keeps_its_type_for_synthesis_only_when_unscaled(tmp_path):
    import nibabel as nib

    from MRISynthesisLib.io import load_volume
    from MRISynthesisLib.pipeline import volume_sha256

    stored = np.round(head_phantom((12, 10, 8), seed=6)).astype(np.int16)
    nib.save(nib.Nifti1Image(stored, np.eye(4)), str(tmp_path / "plain.nii.gz"))
    scaled = nib.Nifti1Image(stored, np.eye(4))
    scaled.header.set_slope_inter(0.5, 3.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    kept, converted = load_volume(tmp_path / "plain.nii.gz", keep_integers=True), load_volume(tmp_path / "plain.nii.gz")
    assert kept.array.dtype == np.int16 and converted.array.dtype == np.float32
    assert np.array_equal(kept.array, converted.array) and volume_sha256(kept) == volume_sha256(converted)
    rescaled = load_volume(tmp_path / "scaled.nii.gz", keep_integers=True)
    assert rescaled.array.dtype == np.float32 and np.allclose(rescaled.array, stored * 0.5 + 3.0)


def test_brain_mask_subsample_matches_a_full_copy(monkeypatch):
    """The Otsu threshold's regular subsample, gathered slab by slab, equals values[::step]."""
    from MRISynthesisLib import preprocessing

    rng = np.random.default_rng(0)
    array = rng.random((37, 21, 19), dtype=np.float32) - 0.2
    positive = array > 0
    for step in (1, 2, 7, 1000):
        expected = array[positive][::step]
        got = preprocessing._regular_subsample(array.transpose(2, 1, 0), positive.transpose(2, 1, 0), step)
        assert np.array_equal(got, array.transpose(2, 1, 0)[positive.transpose(2, 1, 0)][::step])
        assert np.array_equal(preprocessing._regular_subsample(array, positive, step), expected)
    assert brain_mask(array.transpose(2, 1, 0)).shape == (19, 21, 37)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_peak_memory_stays_near_input_plus_output(tiny_checkpoint):
    """A 320 x 320 x 64 volume (26 MB): the whole-volume path grew peak RSS by 3.5 volumes, the
    slab-wise path by 1.6 (the output, the mask while it is computed, one batch)."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        import numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from MRISynthesisLib.synthesis import Synthesizer
        from MRISynthesisLib.volume import Volume
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        synthesizer = Synthesizer({str(tiny_checkpoint)!r}, device="cpu", mixed_precision=False)
        head = np.empty((320, 320, 64), np.float32)  # a ball, built slice by slice (no big temporaries)
        x = np.linspace(-1, 1, 320, dtype=np.float32)
        for k, z in enumerate(np.linspace(-1, 1, 64, dtype=np.float32)):
            ball = 1.0 - (x[:, None] ** 2 + x[None, :] ** 2 + z ** 2)
            head[:, :, k] = np.where(ball < 0.3, 0.0, ball)
        synthesizer.synthesize(Volume(np.arange(9600, dtype=np.float32).reshape(40, 40, 6), np.eye(4)))  # warm up
        volume = Volume(head, np.diag([0.6, 0.6, 1.8, 1.0]))
        before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()  # current RSS
        try:  # reset the high-water mark to now: pages reclaimed earlier (e.g. by the kernel's proactive
            # reclaim) would otherwise make the import-time peak count as growth
            with open("/proc/self/clear_refs", "w") as stream:
                stream.write("5")
            def peak():
                for line in open("/proc/self/status"):
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        synthesizer.synthesize(volume)
        print(json.dumps({{"growth": peak() - before, "volume": head.nbytes}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["growth"] < 2.0 * result["volume"], result


# -- real subject, shipped model ----------------------------------------------------------------

def test_bf16_stays_close_to_fp32_on_a_real_subject_with_the_shipped_model(shared_data):
    """Three central slices of a real T1 (bf16 is emulated, hence slow, on CPUs without it)."""
    from MRISynthesisLib import catalog
    from MRISynthesisLib.io import load_volume

    volume = load_volume(shared_data / "paired" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz")
    brain = brain_mask(volume.array)
    k = int(np.argmax(brain.sum(axis=(0, 1))))
    mask = np.zeros_like(brain)
    mask[:, :, k - 1:k + 2] = brain[:, :, k - 1:k + 2]
    model = catalog.resolve_model(None, "t1-to-t2")
    fp32 = Synthesizer(model, device="cpu", precision="fp32").synthesize(volume, mask=mask).array
    bf16 = Synthesizer(model, device="cpu", precision="bf16").synthesize(volume, mask=mask).array
    difference = np.abs(fp32 - bf16)[mask]
    assert 0 < difference.max() < 0.06, difference.max()  # normalised units: 1 = the 99.5th percentile
    assert difference.mean() < 0.005
    mse = [float(np.mean((a[mask] - fp32[mask]) ** 2)) for a in (bf16,)]
    assert 10 * np.log10(1.0 / mse[0]) > 40  # bf16 vs fp32 PSNR: far below the model's own error
    assert isinstance(Synthesizer(model, device="cpu").precision, Precision)
