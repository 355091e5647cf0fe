"""Bad and unusual inputs, and outputs that cannot be written: each input is refused with one clear
line before any large allocation, a failed write leaves no output (not even a temporary file), and
what is accepted but unusual (noise, CT, anisotropic voxels, a closed pipe) gets a clear warning."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib import io as volume_io
from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.io import load_volume


def _write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, affine if affine is not None else affine_for("LPS")), str(path))
    return path


def _header_only(path, shape, dtype=np.uint8):
    """A .nii.gz whose header declares ``shape`` but which holds no voxel data at all."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0\0\0\0"
    path.write_bytes(gzip.compress(raw))
    return path


def _one_error_line(capsys, argv, pattern, folder):
    before = sorted(os.listdir(folder))
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]
    assert sorted(os.listdir(folder)) == before
    return lines[0]


# -- memory bomb ------------------------------------------------------------------------

def test_tiny_file_declaring_a_huge_volume_is_refused_before_reading(tmp_path, monkeypatch):
    bomb = _header_only(tmp_path / "bomb.nii.gz", (600, 600, 600))
    assert bomb.stat().st_size < 200

    def never(*args, **kwargs):
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", never)
    with pytest.raises(InputError, match=r"declares 600 x 600 x 600 voxels .* but the file is only \d+ bytes"):
        load_volume(bomb)


def test_volume_beyond_the_voxel_limit_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.nii.gz", head_phantom((30, 34, 20)))
    monkeypatch.setattr(volume_io, "MAX_VOXELS", 10_000)
    with pytest.raises(InputError, match=r"declares 30 x 34 x 20 = 20,400 voxels, more than the 10,000"):
        load_volume(path)


def test_truncated_uncompressed_file_is_refused(tmp_path):
    path = _write(tmp_path / "cut.nii", head_phantom((30, 34, 20)))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated or its header is wrong"):
        load_volume(path)


def test_memory_bomb_through_the_command_line(tmp_path, tiny_checkpoint, capsys):
    bomb = _header_only(tmp_path / "bomb.nii.gz", (1200, 1200, 1200))
    _one_error_line(capsys, ["synthesize", str(bomb), "-o", str(tmp_path / "o.nii.gz"), "--model",
                             str(tiny_checkpoint), "--quiet"], "more than the", tmp_path)


# -- secondary outputs on a full disk: one line, nothing written -----------------------

def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def t1(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    return _write(folder / "t1.nii.gz", head_phantom((30, 34, 20)), affine_for("RAS", spacing=(0.9, 0.9, 5.5)))


def test_preview_on_a_full_disk_leaves_no_output_at_all(tmp_path, t1, tiny_checkpoint, capsys, monkeypatch):
    from MRISynthesisLib import preview

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(preview, "write_png", _disk_full)
    line = _one_error_line(capsys, ["synthesize", str(t1), "-o", str(out / "t2.nii.gz"), "--model",
                                    str(tiny_checkpoint), "--quiet", "--preview", str(out / "p.png")],
                           "No space left on device", out)
    assert "p.png" in line and "no output was written" in line
    assert os.listdir(out) == []  # neither the main output nor any temporary file


def test_evaluate_json_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    ref = head_phantom((30, 34, 20))
    ref_path, pred_path = _write(tmp_path / "ref.nii", ref), _write(tmp_path / "pred.nii", ref * 0.9)
    monkeypatch.setattr("json.dump", _disk_full)
    _one_error_line(capsys, ["evaluate", "--pred", str(pred_path), "--ref", str(ref_path), "--json",
                             str(tmp_path / "m.json")], "No space left on device", tmp_path)


# -- temporary files of interrupted writes ----------------------------------------------

def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path):
    import signal

    from MRISynthesisLib.atomic import Terminated, atomic_path, terminate_cleanly

    previous = signal.getsignal(signal.SIGTERM)
    try:
        terminate_cleanly()
        with pytest.raises(Terminated):
            with atomic_path(tmp_path / "out.nii.gz") as tmp:
                with open(tmp, "wb") as stream:
                    stream.write(b"partial")
                os.kill(os.getpid(), signal.SIGTERM)
                import time

                time.sleep(5)  # the handler raises long before this ends
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.listdir(tmp_path) == []


def test_temporary_file_of_a_killed_process_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "out.nii.gz"
    code = ("import os, sys\nfrom MRISynthesisLib.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    open(tmp, 'wb').write(b'x')\n    os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code, str(target)], cwd=os.getcwd())
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.nii.gz.") and "mrisynthesis-tmp-" in leftovers[0]
    # A temporary file of a live process (this one's parent) is left alone.
    from MRISynthesisLib.atomic import _temp_prefix

    alive = tmp_path / (_temp_prefix(target).replace(f".{os.getpid()}.", f".{os.getppid()}.") + "abc.nii.gz")
    alive.write_bytes(b"y")
    volume_io.save_volume(load_volume(_write(tmp_path / "src.nii", head_phantom((20, 20, 20)))), target)
    assert sorted(os.listdir(tmp_path)) == sorted(["out.nii.gz", "src.nii", alive.name])


# -- messages that name the real problem -------------------------------------------------

def test_nan_affine_is_named_as_such(tmp_path, tiny_checkpoint, capsys):
    import struct

    path = _write(tmp_path / "nan.nii", head_phantom((30, 34, 20)))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 280, float("nan"))  # srow_x[0] of the NIfTI-1 header
    path.write_bytes(bytes(data))
    line = _one_error_line(capsys, ["synthesize", str(path), "-o", str(tmp_path / "o.nii.gz"),
                                    "--model", str(tiny_checkpoint), "--quiet"], "NaN or infinite", tmp_path)
    assert "index-to-RAS matrix" in line and "shape" not in line


def test_negative_only_input_and_empty_mask_are_named(tmp_path, t1, tiny_checkpoint, capsys):
    negative = _write(tmp_path / "neg.nii.gz", -head_phantom((30, 34, 20)) - 1)
    _one_error_line(capsys, ["synthesize", str(negative), "-o", str(tmp_path / "o.nii.gz"), "--model",
                             str(tiny_checkpoint), "--quiet"], "no positive voxels", tmp_path)
    empty = _write(tmp_path / "mask.nii.gz", np.zeros((30, 34, 20), np.float32),
                   affine_for("RAS", spacing=(0.9, 0.9, 5.5)))
    _one_error_line(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii.gz"), "--brain-mask", str(empty),
                             "--model", str(tiny_checkpoint), "--quiet"], "--brain-mask mask.nii.gz is empty",
                    tmp_path)


def test_pickle_file_is_named_as_a_pickle(tmp_path, t1, capsys):
    import torch

    for name in ("model.safetensors", "model.pth"):
        torch.save({"w": torch.zeros(2)}, tmp_path / name)
        line = _one_error_line(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii.gz"), "--model",
                                        str(tmp_path / name), "--quiet"], "PyTorch pickle file", tmp_path)
        assert "header too large" not in line


@pytest.mark.parametrize("content,pattern", [
    ("[1, 2]", 'expected {"models": [...]}'),
    ('{"models": {"a": 1}}', 'expected {"models": [...]}'),
    ('{"models": [1]}', "entry 1 is not an object"),
    ('{"models": [{"id": "x"}]}', "entry 1 lacks title"),
    ('{"models": [{"id": "x", "title": "t", "direction": "t1-to-t2", "file": "f", "sha256": 5}]}', "sha256 = 5"),
    ('{"models": [', "malformed"),
])
def test_malformed_catalog_is_one_line(tmp_path, capsys, monkeypatch, content, pattern):
    (tmp_path / "Models.json").write_text(content)
    monkeypatch.setenv("MRISYNTHESIS_RESOURCES", str(tmp_path))
    line = _one_error_line(capsys, ["models"], "malformed", tmp_path)
    assert pattern in line


def test_out_of_memory_message_is_useful(tmp_path, t1, tiny_checkpoint, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(volume_io, "load_volume", no_memory)
    code = main(["synthesize", str(t1), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_checkpoint), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: out of memory") and "smaller volume" in err


# -- evaluate ----------------------------------------------------------------------------

def test_one_voxel_mask_warns_and_infinite_psnr_is_strict_json(tmp_path, capsys):
    import json

    ref = head_phantom((30, 34, 20))
    mask = np.zeros(ref.shape, np.float32)
    mask[15, 17, 10] = 1
    ref_path, mask_path = _write(tmp_path / "ref.nii", ref), _write(tmp_path / "mask.nii", mask)
    code = main(["evaluate", "--pred", str(ref_path), "--ref", str(ref_path), "--mask", str(mask_path),
                 "--normalisation", "percentile", "--json", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 0 and "warning: the mask has only 1 voxel" in err
    text = (tmp_path / "m.json").read_text()
    assert "Infinity" not in text and "NaN" not in text

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["psnr"] is None and "psnr = inf" in data["notes"][0]
    assert data["warnings"] and data["conventions"]["mask_voxels"] == 1


def test_per_slice_metrics_are_axial_for_any_storage_order(tmp_path, capsys):
    import json

    from MRISynthesisLib.orientation import find_axial_axis

    ref = head_phantom((30, 34, 20))
    affine = affine_for("LAS")  # axis 0 is left-right: sagittal if read naively
    assert find_axial_axis(affine) == 2
    ref_path = _write(tmp_path / "ref.nii", ref, affine)
    pred_path = _write(tmp_path / "pred.nii", ref * 0.8, affine)
    code = main(["evaluate", "--pred", str(pred_path), "--ref", str(ref_path), "--per-slice",
                 "--json", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert code == 0 and "slice_axis: axial" in out and "slice_axis: 0" not in out
    data = json.loads((tmp_path / "m.json").read_text())
    axial_with_foreground = int(np.count_nonzero((ref > 0).any(axis=(0, 1))))
    assert len(data["per_slice"]["slice_indices"]) == axial_with_foreground


def test_evaluate_defaults_reproduce_the_validation_convention(tmp_path, capsys):
    import json

    from MRISynthesisLib.metrics import evaluate
    from MRISynthesisLib.orientation import to_canonical_slices
    from MRISynthesisLib.preprocessing import brain_mask, percentile_normalise

    ref = head_phantom((30, 34, 20))
    mask = brain_mask(ref)
    reference, _ = percentile_normalise(ref, mask)
    pred = np.clip(reference * 0.8 + 0.05, 0, 1) * mask  # a synthetic volume in model units
    ref_path, pred_path = _write(tmp_path / "ref.nii", ref), _write(tmp_path / "pred.nii", pred.astype(np.float32))
    assert main(["evaluate", "--pred", str(pred_path), "--ref", str(ref_path), "--json", str(tmp_path / "m.json")]) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    # what training validation and the README's table compute (Training/validation.py, study):
    # the reference normalised in its brain mask, the synthetic as is, on canonical axial slices
    stack = lambda array: to_canonical_slices(np.asarray(array, np.float32), affine_for("LPS"))[0]  # noqa: E731
    expected = evaluate(stack(pred), stack(reference), stack(mask), normalisation="none")
    for name in ("mae", "psnr", "ssim"):
        assert data[name] == pytest.approx(expected[name], abs=1e-6)
    assert data["conventions"]["normalisation"] == "model-units"
    renormalised = evaluate(pred, ref, mask, normalisation="percentile")
    assert abs(renormalised["mae"] - data["mae"]) > 1e-3  # the old default gave other numbers


# -- preview size ------------------------------------------------------------------------

def test_preview_of_extremely_anisotropic_voxels_is_bounded(tmp_path):
    from MRISynthesisLib.preview import MAX_PANEL_PIXELS, render_preview
    from MRISynthesisLib.volume import Volume

    volume = Volume(head_phantom((40, 36, 20)), affine_for("RAS", spacing=(0.01, 10.0, 1.0)))
    picture = render_preview(volume, volume)  # the canvas --preview writes as PNG
    # 360 mm (rows) x 0.4 mm (columns) slices: rows capped at the limit, aspect kept (no 36000 px)
    assert picture.shape[0] == MAX_PANEL_PIXELS and picture.shape[1] <= 2 * 2 + 4


# -- inputs unlike brain MRI --------------------------------------------------------------

def _noise_and_ct():
    rng = np.random.default_rng(0)
    noise = rng.random((120, 140, 40)).astype(np.float32) * 1000
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (120, 140, 40)], indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0))
    ct = np.full(radius.shape, -1000.0, np.float32)
    ct[radius < 0.8] = 1500
    ct[radius < 0.72] = 40 + 10 * rng.standard_normal(int((radius < 0.72).sum()))
    return noise, ct


def test_noise_and_ct_raise_warnings_recorded_in_the_output(tmp_path, tiny_checkpoint, capsys):
    from MRISynthesisLib.io import read_provenance

    noise, ct = _noise_and_ct()
    # (the foreground and histogram warnings depend on the brain mask, which brain extraction may shrink)
    for name, array, words in (("noise", noise, ("independent",)), ("ct", ct, ("negative",))):
        path = _write(tmp_path / f"{name}.nii.gz", array, affine_for("RAS", spacing=(1.5, 1.5, 4.0)))
        out = tmp_path / f"{name}-t2.nii.gz"
        assert main(["synthesize", str(path), "-o", str(out), "--model", str(tiny_checkpoint), "--quiet"]) == 0
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert warnings and all(w in " ".join(warnings) for w in words), warnings
        provenance = read_provenance(out)
        assert provenance["input_check"]["ok"] is False and len(provenance["input_check"]["warnings"]) == len(warnings)
        assert provenance["model_id"] == "test-baseline"
        assert b"INPUT CHECK WARNINGS" in nib.load(str(out)).header["descrip"].tobytes()


@pytest.mark.realdata
def test_real_brain_mri_passes_the_input_check(shared_data):
    from MRISynthesisLib.input_check import check_volume

    paths = sorted((shared_data / "paired").glob("*/*T2*.nii.gz"))[:2] + sorted(
        (shared_data / "raw").glob("*/*.nii.gz"))[:1]
    assert paths
    for path in paths:
        check = check_volume(load_volume(path))
        assert check.ok, (path.name, check.warnings)
        assert 0.5 < check.statistics["neighbour_correlation"] <= 1


# -- the command line in everyday use ------------------------------------------------------------

@pytest.mark.parametrize("module, argv", [("MRISynthesisLib", ["models"]), ("MRISynthesisLib", ["evaluate", "--help"]),
                                          ("Training", ["--list-options"])])  # = mrisynthesis train --list-options
def test_closed_pipe_gives_no_traceback(module, argv):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=os.getcwd())
    process.stdout.close()  # as `| head -0` does
    err = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_progress_bar_first_rate_counts_from_the_start(capsys):
    import re
    import time

    from MRISynthesisLib.cli import _progress_bar

    update, close = _progress_bar(False, "synthesizing")
    time.sleep(0.25)
    update(8, 100)
    close()
    rates = [float(r) for r in re.findall(r"([\d.]+)slice/s", capsys.readouterr().err)]
    assert rates and max(rates) < 8 / 0.25 * 1.5, rates


def test_uncertainty_with_a_model_that_cannot_sample_says_so_before_work(tmp_path, t1, capsys):
    line = _one_error_line(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii.gz"), "--uncertainty",
                                    str(tmp_path / "std.nii.gz"), "--quiet"], "cannot produce an uncertainty map",
                        tmp_path)
    assert "VAE" in line


@pytest.mark.parametrize("codes", [(0, 1), (2, 0), (1, 1)])
def test_sform_and_qform_codes_are_kept(tmp_path, codes):
    image = nib.Nifti1Image(head_phantom((20, 22, 12)), affine_for("LPS", spacing=(1.0, 1.2, 3.0)))
    image.set_sform(image.affine, code=codes[0])
    image.set_qform(image.affine, code=codes[1])
    nib.save(image, str(tmp_path / "in.nii.gz"))
    source = load_volume(tmp_path / "in.nii.gz")
    out = volume_io.save_volume(source.with_array(source.array * 2), tmp_path / "out.nii.gz")
    header = nib.load(str(out)).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == codes
    assert np.allclose(load_volume(out).affine, source.affine, atol=1e-5)


# -- a PNG that cannot be written leaves no second error behind --------------------------

class _FullDiskFile:
    """A file on a full disk: nothing can be written, and closing it (which would flush) fails too,
    as often as it is tried (as a buffered file on a full network disk does)."""

    closed = False

    def _full(self, *args, **kwargs):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    write = flush = close = fileno = _full

    def writable(self):
        return True

    def seek(self, *args):
        return 0

    def tell(self):
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_preview_on_a_full_disk_gives_one_error_and_no_exception_ignored(tmp_path, t1, tiny_checkpoint, capsys,
                                                                         monkeypatch):
    import builtins
    import gc
    import sys

    real_open = builtins.open

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        if str(file).endswith(".png") and "w" in mode:
            return _FullDiskFile()
        return real_open(file, mode, *args, **kwargs)

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda record: unraisable.append(record.exc_value))
    monkeypatch.setattr(builtins, "open", open_on_full_disk)
    out = tmp_path / "out"
    out.mkdir()
    line = _one_error_line(capsys, ["synthesize", str(t1), "-o", str(out / "t2.nii.gz"), "--model",
                                    str(tiny_checkpoint), "--quiet", "--preview", str(out / "p.png")],
                           "No space left on device; no output was written", out)
    gc.collect()  # a writer object left half-closed would report its error now
    assert "p.png" in line and unraisable == [] and os.listdir(out) == []


def test_a_given_mask_on_one_unsampled_slice_is_checked_without_error(tiny_checkpoint):
    """The input check samples every n-th axial slice; a given mask on another slice still works."""
    from MRISynthesisLib.synthesis import Synthesizer
    from MRISynthesisLib.volume import Volume

    array = head_phantom((40, 44, 70))
    mask = np.zeros(array.shape, dtype=bool)
    mask[:, :, 35] = array[:, :, 35] > 0  # 70 slices: the check samples every 2nd (0, 2, ...)
    result = Synthesizer(tiny_checkpoint, device="cpu").synthesize(Volume(array, affine_for("RAS")), mask=mask)
    assert result.array[:, :, 35].max() > 0 and not result.array[:, :, 34].any()
