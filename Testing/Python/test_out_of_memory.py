"""GPU out of memory on the command line: the core's fallback (batch size 1, then the CPU), the
same as the Slicer module's (Testing/Python/slicer_module/test_slicer_gpu_fallback.py). A GPU
that runs out of memory is simulated: a CPU synthesizer that says it is on CUDA and raises the
RuntimeError PyTorch raises (torch.cuda.OutOfMemoryError) for batches of at least ``fail_from``."""

import nibabel as nib
import numpy as np
import pytest
import torch
from phantoms import affine_for, head_phantom

from MRISynthesisLib import synthesis
from MRISynthesisLib.cli import main
from MRISynthesisLib.synthesis import Synthesizer, is_out_of_memory, synthesize_with_fallback
from MRISynthesisLib.volume import Volume

BATCH_8_NOTE = "The GPU (cuda) ran out of memory with batch size 8; retrying with batch size 1."
BATCH_1_NOTE = "The GPU (cuda) ran out of memory even with batch size 1; retrying on the CPU (slower)."


def gpu_without_memory(fail_from: int, made: list):
    """A Synthesizer class whose 'cuda' instances run out of memory from ``fail_from`` slices per batch."""

    class GPUWithoutMemory(Synthesizer):
        def __init__(self, checkpoint, device="auto", batch_size=8, **options):
            super().__init__(checkpoint, device="cpu", batch_size=batch_size, **options)
            made.append((str(device), int(batch_size)))
            if device != "cpu":
                self.device = torch.device("cuda")

        def _run(self, volume, progress, mask, samples):
            if self.device.type != "cuda":
                return super()._run(volume, progress, mask, samples)
            if self.batch_size >= fail_from:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            self.device = torch.device("cpu")  # the batches that fit run on the CPU here
            try:
                return super()._run(volume, progress, mask, samples)
            finally:
                self.device = torch.device("cuda")

    return GPUWithoutMemory


@pytest.fixture
def t1(tmp_path):
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(head_phantom((30, 34, 20)), affine_for("RAS", spacing=(0.9, 0.9, 5.5))), str(path))
    return path


# The simulated GPU is the CPU: the automatic brain-mask decision would run deepbet's coarse network
# on the synthesizer's device ('cuda', absent here), so these runs use the synthesizer's own mask.
NO_EXTRACTION = ("--brain-mask", "none")


def synthesize(tmp_path, t1, checkpoint, name, *options):
    output = tmp_path / name
    code = main(["synthesize", str(t1), "-o", str(output), "--model", str(checkpoint), "--quiet", *NO_EXTRACTION,
                 *options])
    return code, output


@pytest.mark.parametrize("fail_from, calls, notes", [
    (2, [("cuda", 8), ("cuda", 1)], [BATCH_8_NOTE]),
    (1, [("cuda", 8), ("cuda", 1), ("cpu", 8)], [BATCH_8_NOTE, BATCH_1_NOTE]),
])
def test_cli_recovers_from_gpu_out_of_memory_like_the_module(tmp_path, t1, tiny_checkpoint, capsys, monkeypatch,
                                                             fail_from, calls, notes):
    code, expected = synthesize(tmp_path, t1, tiny_checkpoint, "cpu.nii.gz", "--device", "cpu")
    assert code == 0
    capsys.readouterr()
    made = []
    monkeypatch.setattr(synthesis, "Synthesizer", gpu_without_memory(fail_from, made))
    code, output = synthesize(tmp_path, t1, tiny_checkpoint, "gpu.nii.gz", "--device", "cuda", "--batch-size", "8")
    err = capsys.readouterr().err
    assert code == 0, err
    assert made == calls
    assert [line[len("warning: "):] for line in err.splitlines() if "ran out of memory" in line] == notes
    assert "Traceback" not in err
    # the fallback computes what a plain run computes (same model, same arithmetic)
    np.testing.assert_array_equal(nib.load(str(output)).get_fdata(), nib.load(str(expected)).get_fdata())


def test_out_of_memory_on_the_cpu_too_is_one_line_with_status_1(tmp_path, t1, tiny_checkpoint, capsys, monkeypatch):
    def no_memory_anywhere(self, volume, progress, mask, samples):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes.")

    monkeypatch.setattr(Synthesizer, "_run", no_memory_anywhere)
    code, output = synthesize(tmp_path, t1, tiny_checkpoint, "o.nii.gz", "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 1 and not output.exists()
    assert err.count("\n") == 1 and err.startswith("error: out of memory (DefaultCPUAllocator"), err


def test_other_runtime_errors_are_not_retried(tiny_checkpoint):
    made = []

    def create(device, batch_size):
        made.append((device, batch_size))
        fake = Synthesizer(tiny_checkpoint, device="cpu", batch_size=batch_size)
        fake.device = torch.device("cuda")
        fake.synthesize = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA error: illegal memory access"))
        return fake

    volume = Volume(head_phantom((30, 34, 20)), affine_for("RAS"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        synthesize_with_fallback(create, volume, "cuda", 8)
    assert made == [("cuda", 8)]


def test_out_of_memory_recognition():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    assert not is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("out of memory"))


def test_bids_app_recovers_from_gpu_out_of_memory_like_the_command_line(tmp_path, t1, tiny_checkpoint, capsys,
                                                                         monkeypatch):
    """The BIDS App runs through the same pipeline, so it has the same fallback (it had none before)."""
    import json

    from MRISynthesisLib import device

    bids = tmp_path / "bids" / "sub-01" / "anat"
    bids.mkdir(parents=True)
    (bids / "sub-01_T1w.nii.gz").write_bytes(t1.read_bytes())
    code, expected = synthesize(tmp_path, t1, tiny_checkpoint, "cpu.nii.gz", "--device", "cpu")
    assert code == 0
    made = []
    monkeypatch.setattr(synthesis, "Synthesizer", gpu_without_memory(2, made))
    monkeypatch.setattr(device, "select_device", lambda requested="auto": torch.device("cpu"))  # "a GPU is there"
    out = tmp_path / "derivatives"
    assert main(["bids", str(tmp_path / "bids"), str(out), "participant", "--model", str(tiny_checkpoint),
                 "--device", "cuda", "--quiet", "--no-report", *NO_EXTRACTION]) == 0, capsys.readouterr().err
    image = out / "sub-01" / "anat" / "sub-01_desc-synthetic_T2w.nii.gz"
    sidecar = json.loads(image.with_suffix("").with_suffix(".json").read_text())
    assert made == [("cuda", 8)]  # its synthesizer cache retries with the loaded model at batch size 1
    assert BATCH_8_NOTE in sidecar["Warnings"] and sidecar["Device"] == "cuda"
    np.testing.assert_array_equal(nib.load(str(image)).get_fdata(), nib.load(str(expected)).get_fdata())
