"""NRRD (3D Slicer's native format) in and out: same voxels and the same RAS geometry as NIfTI;
hostile NRRD files are refused quickly, with bounded memory."""

import base64
import gzip
import os
import zlib

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.io import load_volume, save_volume
from MRISynthesisLib.volume import Volume

nrrd = pytest.importorskip("nrrd")


def _oblique_affine():
    """An anisotropic, oblique, LPS-ish matrix with many significant digits."""
    angle = np.deg2rad(17.3)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rotation @ np.diag([0.9375, 0.9375, 3.3])
    affine[:3, 3] = [117.123456789, -98.7654321, 44.4444]
    return affine


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr"])
def test_nrrd_round_trip_matches_the_nifti_path(tmp_path, suffix):
    volume = Volume(head_phantom((20, 24, 12)), _oblique_affine())
    save_volume(volume, tmp_path / "v.nii.gz")
    save_volume(volume, tmp_path / f"v{suffix}")
    from_nifti, from_nrrd = load_volume(tmp_path / "v.nii.gz"), load_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(from_nrrd.array, from_nifti.array)
    assert np.array_equal(from_nrrd.array, volume.array)
    # NIfTI stores the matrix as float32; NRRD keeps the full float64 text.
    np.testing.assert_allclose(from_nrrd.affine, volume.affine, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_nrrd.affine, from_nifti.affine, rtol=0, atol=1e-4)
    if suffix == ".nhdr":
        assert sorted(os.listdir(tmp_path)) == ["v.nhdr", "v.nii.gz", "v.raw.gz"]  # no temporary left


def test_written_nrrd_is_lps_as_slicer_writes_it(tmp_path):
    affine = affine_for("RAS", spacing=(0.9, 0.8, 5.5), origin=(10.0, -20.0, 30.0))
    save_volume(Volume(head_phantom((20, 24, 12)), affine), tmp_path / "v.nrrd")
    header = nrrd.read_header(str(tmp_path / "v.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], np.diag([-0.9, -0.8, 5.5]))
    np.testing.assert_array_equal(header["space origin"], [-10.0, 20.0, 30.0])


@pytest.mark.parametrize("space, signs", [("left-posterior-superior", (-1, -1, 1)), ("RAS", (1, 1, 1)),
                                          ("left-anterior-superior", (-1, 1, 1))])
def test_handwritten_header_in_any_patient_space_gives_the_ras_affine(tmp_path, space, signs):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, order="F")
    header = ["NRRD0004", "type: short", "dimension: 3", f"space: {space}", "sizes: 4 5 6",
              "space directions: (0.9,0,0) (0,0,1.5) (0,2.5,0)", "kinds: domain domain domain",
              "endian: little", "encoding: raw", "space origin: (10,20,30)", "", ""]
    path = tmp_path / "hand.nrrd"
    path.write_bytes("\n".join(header).encode() + data.tobytes(order="F"))
    volume = load_volume(path)
    expected = np.eye(4)
    expected[:3, :3] = np.diag(signs) @ np.array([[0.9, 0, 0], [0, 0, 2.5], [0, 1.5, 0]])
    expected[:3, 3] = np.multiply(signs, [10, 20, 30])
    np.testing.assert_array_equal(volume.affine, expected)
    assert volume.array[1, 2, 3] == data[1, 2, 3] and volume.shape == (4, 5, 6)


def test_cli_synthesizes_nrrd_exactly_like_nifti(tmp_path, tiny_checkpoint, capsys):
    image = nib.Nifti1Image(head_phantom((30, 34, 20)), affine_for("LPS", spacing=(0.9, 0.9, 2.0)))
    nib.save(image, str(tmp_path / "t1.nii.gz"))
    save_volume(load_volume(tmp_path / "t1.nii.gz"), tmp_path / "t1.nrrd")
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    assert main(["synthesize", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "a.nii.gz")] + model) == 0
    assert main(["synthesize", str(tmp_path / "t1.nrrd"), "-o", str(tmp_path / "b.nrrd")] + model) == 0
    assert main(["synthesize", str(tmp_path / "t1.nrrd"), "-o", str(tmp_path / "c.nhdr")] + model) == 0
    a, b, c = (load_volume(tmp_path / name) for name in ("a.nii.gz", "b.nrrd", "c.nhdr"))
    assert a.array.max() > 0
    assert np.array_equal(a.array, b.array) and np.array_equal(a.array, c.array)
    np.testing.assert_allclose(b.affine, a.affine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c.affine, a.affine, rtol=0, atol=1e-5)


def _one_line_error(capsys, argv, pattern, folder):
    before = sorted(os.listdir(folder))
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    assert sorted(os.listdir(folder)) == before


def test_nrrd_without_patient_space_or_with_vectors_is_refused(tmp_path, tiny_checkpoint, capsys):
    nrrd.write(str(tmp_path / "nospace.nrrd"), head_phantom((20, 20, 8)))
    nrrd.write(str(tmp_path / "vector.nrrd"), np.zeros((3, 20, 20, 8), np.float32),
               {"kinds": ["vector", "domain", "domain", "domain"], "space": "left-posterior-superior",
                "space directions": [[np.nan] * 3, [1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\ntype: float\n")
    (tmp_path / "huge.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 4000\n"
                                         b"space: LPS\nencoding: raw\n\n")
    argv = ["-o", str(tmp_path / "o.nrrd"), "--model", str(tiny_checkpoint)]
    _one_line_error(capsys, ["synthesize", str(tmp_path / "nospace.nrrd")] + argv, "not a patient space", tmp_path)
    _one_line_error(capsys, ["synthesize", str(tmp_path / "vector.nrrd")] + argv, "multi-component", tmp_path)
    _one_line_error(capsys, ["synthesize", str(tmp_path / "broken.nrrd")] + argv, "cannot read", tmp_path)
    _one_line_error(capsys, ["synthesize", str(tmp_path / "huge.nrrd")] + argv, "more than the", tmp_path)


# -- hostile NRRD files: bounded memory and time, one-line refusals -------------------------------

#: bzip2 of 1.5 GiB of zero bytes (1169 bytes; made with bz2.BZ2Compressor(9)).
BZIP2_BOMB = base64.b64decode(
    "QlpoOTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kO"
    "CeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAA"
    "CCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWp"
    "CoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J"
    "4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAI"
    "IAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakK"
    "gJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni"
    "3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAgg"
    "ADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqA"
    "lzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLf"
    "AV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAA"
    "MIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCX"
    "MUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8B"
    "X45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAw"
    "gE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcx"
    "QVkmU1m9af1tAB+0wgDAAAAEAAggADDMCapplIgbVJEDxdyRThQkOkSpVcA=")

_LOAD = ("import sys, time\nimport nibabel, nrrd\nfrom MRISynthesisLib.errors import InputError\n"
         "from MRISynthesisLib.io import load_volume\nstarted = time.perf_counter()\n"
         "try:\n    v = load_volume(sys.argv[1])\n    print('accepted', v.shape)\n"
         "except InputError as error:\n    print('refused:', error)\n"
         "print('case seconds:', time.perf_counter() - started)\n")


def _header(*fields, dimension=3, sizes="64 64 64", kind="uchar", encoding="raw"):
    lines = ["NRRD0004", f"type: {kind}", f"dimension: {dimension}", "space: left-posterior-superior",
             f"sizes: {sizes}", "space directions: (1,0,0) (0,1,0) (0,0,1)", "endian: little",
             f"encoding: {encoding}", "space origin: (0,0,0)", *fields]
    return ("\n".join(lines) + "\n").encode()


def _detached(folder, data_name, *fields, **options):
    path = folder / "in.nhdr"
    path.write_bytes(_header(f"data file: {data_name}", *fields, **options))
    return path


def _case(name, folder):
    """Build one hostile case in folder; returns the file to load."""
    folder.mkdir()
    if name == "data file /dev/zero":
        return _detached(folder, "/dev/zero")
    if name == "link to /dev/zero":
        (folder / "zero.raw").symlink_to("/dev/zero")
        return _detached(folder, "zero.raw")
    if name == "data file ../":
        (folder.parent / "outside.raw").write_bytes(bytes(64 ** 3))
        return _detached(folder, "../outside.raw")
    if name == "FIFO data file":
        os.mkfifo(folder / "pipe.raw")
        return _detached(folder, "pipe.raw")
    if name == "FIFO input":
        os.mkfifo(folder / "pipe.nrrd")
        return folder / "pipe.nrrd"
    if name == "bzip2 bomb":
        (folder / "d.raw.bz2").write_bytes(BZIP2_BOMB)
        return _detached(folder, "d.raw.bz2", encoding="bzip2")
    if name == "bzip2 bomb, large declared size":
        (folder / "d.raw.bz2").write_bytes(BZIP2_BOMB)
        return _detached(folder, "d.raw.bz2", encoding="bzip2", sizes="512 512 512")
    if name == "gzip bomb":
        compressor, zeros = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16), bytes(1 << 22)
        (folder / "d.raw.gz").write_bytes(b"".join(compressor.compress(zeros) for _ in range(16)) + compressor.flush())
        return _detached(folder, "d.raw.gz", encoding="gzip")
    if name == "40 GiB sparse data file":
        with open(folder / "d.raw", "wb") as stream:
            stream.truncate(40 << 30)
        return _detached(folder, "d.raw")
    if name == "40 GiB sparse .nrrd":
        path = folder / "in.nrrd"
        with open(path, "wb") as stream:
            stream.write(_header() + b"\n")
            stream.truncate(40 << 30)
        return path
    if name == "header without end":
        path = folder / "in.nrrd"
        with open(path, "wb") as stream:
            stream.write(b"NRRD0004\n")
            stream.truncate(40 << 30)
        return path
    if name == "huge line skip":
        path = folder / "in.nrrd"
        path.write_bytes(_header("line skip: 999999999999") + b"\n" + bytes(64 ** 3))
        return path
    if name == "line skip through a sparse file":
        with open(folder / "d.raw", "wb") as stream:
            stream.truncate(40 << 30)
        return _detached(folder, "d.raw", "line skip: 1000")
    if name == "huge byte skip":
        path = folder / "in.nrrd"
        path.write_bytes(_header("byte skip: 999999999999") + b"\n" + bytes(64 ** 3))
        return path
    if name == "negative sizes":
        path = folder / "in.nrrd"
        path.write_bytes(_header(sizes="-64 -64 64") + b"\n" + bytes(64 ** 3))
        return path
    raise ValueError(name)


HOSTILE = {
    "data file /dev/zero": "is outside the header's folder",
    "link to /dev/zero": "is outside the header's folder",
    "data file ../": "is outside the header's folder",
    "FIFO data file": "is not a regular file",
    "FIFO input": "is not a regular file",
    "bzip2 bomb": "holds more data than its header declares",
    "bzip2 bomb, large declared size": "would decompress more than 1100 times its size",
    "gzip bomb": "holds more data than its header declares",
    "40 GiB sparse data file": "holds 42,949,672,960 bytes after its header",
    "40 GiB sparse .nrrd": "bytes after its header and skips",
    "header without end": "header is longer than 1,048,576 bytes",
    "huge line skip": "line skip 999999999999 / byte skip 0 exceeds",
    "line skip through a sparse file": "line skip is longer than its data file",
    "huge byte skip": "byte skip 999999999999 exceeds",
    "negative sizes": "must be positive",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_nrrd_is_refused_quickly_with_bounded_memory(tmp_path, name):
    """Measured in a child process: peak RSS of the whole child, time of the case itself (the
    child's start and imports excluded; a hang is killed at the timeout)."""
    from bounded import MAX_RSS_BYTES, MAX_SECONDS, run_bounded

    path = _case(name, tmp_path / "case")
    try:
        result = run_bounded(_LOAD, path, timeout=MAX_SECONDS + 5, address_space=3 << 30)
    finally:
        for sparse in tmp_path.rglob("*"):  # free the sparse files at once
            if sparse.is_file() and not sparse.is_symlink() and sparse.stat().st_size > 1 << 30:
                sparse.unlink()
    assert result.returncode == 0, f"{name}: killed or crashed after {result.seconds:.1f} s: {result.output[-500:]}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: ") and HOSTILE[name] in lines[0], result.output
    assert result.case_seconds < MAX_SECONDS, f"{name}: {result.case_seconds:.1f} s (child: {result.seconds:.1f} s)"
    assert result.peak_rss_bytes < MAX_RSS_BYTES, f"{name}: peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB"


def test_data_file_in_a_subfolder_is_read(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6, order="F")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "v.raw").write_bytes(data.tobytes(order="F"))
    path = tmp_path / "v.nhdr"
    path.write_bytes(_header("data file: data/v.raw", sizes="4 5 6", kind="float"))
    assert np.array_equal(load_volume(path).array, data)


@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2", "ascii"])
def test_every_encoding_reads_exactly_the_declared_values(tmp_path, encoding):
    data = (np.arange(7 * 5 * 3, dtype=np.float64).reshape(7, 5, 3, order="F") - 20) / 3
    nrrd.write(str(tmp_path / "v.nrrd"), data, {"space": "left-posterior-superior", "encoding": encoding,
                                              "space directions": np.eye(3), "space origin": np.zeros(3)})
    assert np.array_equal(load_volume(tmp_path / "v.nrrd").array, data.astype(np.float32))


def test_4d_nrrd_whose_last_axis_has_length_1_is_read_as_3d(tmp_path):
    data = head_phantom((20, 24, 12))
    header = {"space": "left-posterior-superior", "kinds": ["domain", "domain", "domain", "list"],
              "space directions": [[0.9, 0, 0], [0, 0.9, 0], [0, 0, 2.0], [np.nan] * 3], "space origin": [1, 2, 3]}
    nrrd.write(str(tmp_path / "v.nrrd"), data[..., None], header)
    nrrd.write(str(tmp_path / "nokinds.nrrd"), data[..., None],
               {"space": "left-posterior-superior", "space directions": [[0.9, 0, 0], [0, 0.9, 0], [0, 0, 2.0],
                                                                         [np.nan] * 3], "space origin": [1, 2, 3]})
    for name in ("v.nrrd", "nokinds.nrrd"):
        volume = load_volume(tmp_path / name)
        assert volume.shape == (20, 24, 12) and np.array_equal(volume.array, data)
        np.testing.assert_array_equal(volume.affine[:3, :3], np.diag([-0.9, -0.9, 2.0]))
    nrrd.write(str(tmp_path / "two.nrrd"), np.stack([data, data], -1), header)
    with pytest.raises(InputError, match="multi-component"):
        load_volume(tmp_path / "two.nrrd")
    del header["kinds"]
    nrrd.write(str(tmp_path / "two.nrrd"), np.stack([data, data], -1), header)
    with pytest.raises(InputError, match="several volumes"):
        load_volume(tmp_path / "two.nrrd")


def test_nrrd_origin_beyond_a_kilometre_is_refused(tmp_path, tiny_checkpoint, capsys):
    path = tmp_path / "far.nrrd"
    path.write_bytes(_header(sizes="20 20 8").replace(b"(0,0,0)", b"(1e300,0,0)") + b"\n"
                     + (head_phantom((20, 20, 8)) > 0).astype(np.uint8).tobytes(order="F"))
    with pytest.raises(InputError, match=r"index-to-RAS matrix has a value of 1e\+300 mm"):
        load_volume(path)


# -- .nhdr output: never over an input's or a stranger's data file; all or nothing ----------------

@pytest.fixture
def nhdr_input(tmp_path):
    """An input ``in.nhdr`` whose data file is called ``out.raw.gz`` (the name ``-o out.nhdr`` writes)."""
    volume = Volume(head_phantom((30, 34, 20)), affine_for("LPS", spacing=(0.9, 0.9, 2.0)))
    save_volume(volume, tmp_path / "out.nhdr")
    (tmp_path / "out.nhdr").rename(tmp_path / "in.nhdr")
    assert b"data file: out.raw.gz" in (tmp_path / "in.nhdr").read_bytes()
    return tmp_path / "in.nhdr"


def test_nhdr_output_never_overwrites_an_input_data_file(tmp_path, nhdr_input, tiny_checkpoint, capsys):
    before = load_volume(nhdr_input).array.copy()
    data = (tmp_path / "out.raw.gz").read_bytes()
    _one_line_error(capsys, ["synthesize", str(nhdr_input), "-o", str(tmp_path / "out.nhdr"), "--model",
                             str(tiny_checkpoint), "--quiet"], "out.raw.gz, which is an input's file", tmp_path)
    assert (tmp_path / "out.raw.gz").read_bytes() == data
    assert np.array_equal(load_volume(nhdr_input).array, before)


def test_nhdr_output_never_overwrites_an_unrelated_file_of_its_data_name(tmp_path, tiny_checkpoint, capsys):
    save_volume(Volume(head_phantom((30, 34, 20)), affine_for("LPS")), tmp_path / "t1.nii.gz")
    (tmp_path / "out.raw.gz").write_bytes(b"somebody else's file")
    argv = ["synthesize", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "out.nhdr"), "--model",
            str(tiny_checkpoint), "--quiet"]
    _one_line_error(capsys, argv, "already exists and is not the data file of out.nhdr", tmp_path)
    assert (tmp_path / "out.raw.gz").read_bytes() == b"somebody else's file"
    (tmp_path / "out.raw.gz").unlink()
    assert main(argv) == 0 and main(argv) == 0  # our own pair may be replaced
    assert sorted(os.listdir(tmp_path)) == ["out.nhdr", "out.raw.gz", "t1.nii.gz"]


def test_nhdr_output_on_a_full_disk_changes_nothing(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from MRISynthesisLib import io as volume_io

    save_volume(Volume(head_phantom((30, 34, 20)), affine_for("LPS")), tmp_path / "t1.nii.gz")
    argv = ["synthesize", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "out.nhdr"), "--model",
            str(tiny_checkpoint), "--quiet", "--save-mask", str(tmp_path / "mask.nii.gz")]
    assert main(argv) == 0
    capsys.readouterr()
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    write_nifti = volume_io.write_nifti

    def full_disk(volume, path):
        if "mask" in str(path):
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        write_nifti(volume, path)

    monkeypatch.setattr(volume_io, "write_nifti", full_disk)
    with monkeypatch.context() as patch:  # a second run with other voxels
        patch.setattr("MRISynthesisLib.synthesis.Synthesizer.synthesize",
                      lambda self, volume, progress=None, mask=None: Volume(
                          volume.array * 0 + 7, volume.affine, {"input_check": {"warnings": []}}))
        _one_line_error(capsys, argv, "No space left on device; no output was written", tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_nhdr_write_killed_midway_leaves_only_temporaries_the_next_write_removes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    volume = Volume(head_phantom((30, 34, 20)), affine_for("LPS"))
    save_volume(volume, tmp_path / "src.nii.gz")
    code = ("import sys, time, zlib\nfrom MRISynthesisLib.io import load_volume, save_volume\n"
            "def stuck(*args):\n    open(sys.argv[3], 'w').close()\n    time.sleep(60)\n"
            "volume = load_volume(sys.argv[1])\nzlib.compressobj = stuck  # the data file is being written\n"
            "save_volume(volume, sys.argv[2])\n")
    started = tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "src.nii.gz"), str(tmp_path / "out.nhdr"),
                              str(started)], cwd=os.getcwd())
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    started.unlink()
    leftovers = sorted(set(os.listdir(tmp_path)) - {"src.nii.gz"})
    assert leftovers and all(name.startswith((".out.nhdr.", ".out.raw.gz.")) and "mrisynthesis-tmp-" in name
                             and (tmp_path / name).is_file() for name in leftovers), leftovers
    save_volume(volume, tmp_path / "out.nhdr")
    assert sorted(os.listdir(tmp_path)) == ["out.nhdr", "out.raw.gz", "src.nii.gz"]
    assert np.array_equal(load_volume(tmp_path / "out.nhdr").array, volume.array)


def test_help_says_masks_may_be_nrrd_and_an_nrrd_mask_works(tmp_path, tiny_checkpoint, capsys):
    """``--help`` names the formats a mask is read in, and an NRRD mask gives the NIfTI mask's output."""
    with pytest.raises(SystemExit):
        main(["synthesize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    brain_mask_help = text[text.index("auto (default):"):].split("--save-mask")[0]
    assert "NIfTI or NRRD" in brain_mask_help, brain_mask_help
    assert "mask NIfTI" not in text
    volume = Volume(head_phantom((24, 28, 12)), affine_for("LPS"))
    mask = volume.with_array((volume.array > 0).astype(np.float32))
    save_volume(volume, tmp_path / "t1.nii.gz")
    outputs = []
    for suffix in (".nii.gz", ".nrrd"):
        save_volume(mask, tmp_path / f"mask{suffix}")
        out = tmp_path / f"out-{suffix.strip('.')}.nii.gz"
        assert main(["synthesize", str(tmp_path / "t1.nii.gz"), "-o", str(out), "--model", str(tiny_checkpoint),
                     "--brain-mask", str(tmp_path / f"mask{suffix}")]) == 0
        outputs.append(load_volume(out).array)
    assert np.array_equal(outputs[0], outputs[1])


_NOISE = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("data,fields,pattern", [
    (zlib.compress(_NOISE), ("encoding: gzip",), "its gzip data is corrupt"),  # zlib's format, not gzip's
    (gzip.compress(_NOISE), ("encoding: gzip",), "declares 262,144 values but holds only 100,000"),
    (bytes(64 ** 3 - 1), (), "holds 262,143 bytes after its header"),
    (bytes(64 ** 3), ("encoding: hex",), "encoding 'hex' is not supported"),
    (bytes(64 ** 3), ("data file: LIST",), "is not supported"),
])
def test_malformed_nrrd_data_is_one_line(tmp_path, data, fields, pattern):
    encoding = next((f.split(": ")[1] for f in fields if f.startswith("encoding")), "raw")
    other = [f for f in fields if not f.startswith("encoding")]
    if other:
        path = tmp_path / "in.nhdr"
        path.write_bytes(_header(*other, encoding=encoding))
    else:
        path = tmp_path / "in.nrrd"
        path.write_bytes(_header(encoding=encoding) + b"\n" + data)
    with pytest.raises(InputError, match=pattern) as error:
        load_volume(path)
    assert "\n" not in str(error.value)


def test_a_model_id_cannot_add_lines_to_a_written_header(tmp_path):
    volume = Volume(head_phantom((20, 24, 12)), affine_for("LPS"),
                    {"provenance": {"model_id": "evil\ndata file: /dev/zero\n\u2192 \u00e9"}})
    save_volume(volume, tmp_path / "out.nrrd")
    header = nrrd.read_header(str(tmp_path / "out.nrrd"))
    assert "data file" not in header and header["content"].startswith("MRISynthesis evil?data file: /dev/zero??")
    assert np.array_equal(load_volume(tmp_path / "out.nrrd").array, volume.array)
