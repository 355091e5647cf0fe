"""The module's T1/T2 sample pair in Slicer's Sample Data module: registered when Slicer has started,
nothing downloaded before a click, each file checked against its SHA-256.

Slicer's SampleData module is a scripted module of the application (not part of the 5.10 framework
folder the harness loads), so it is stood in for here by ``SampleDataStandIn``: it records the
registration and, for a sample the test "clicks", downloads each URI with ``urllib`` (offline: a
``file://`` URI of a file made in the test), checks the ``SHA256:`` checksum as SampleData does and
loads the volume. The checksums of the real pair are checked against the same bytes in
``../shared/data`` (skipped where that folder is absent).
"""

import hashlib
import sys
import types
import urllib.request

import numpy as np
import pytest
import slicer

from MRISynthesisSlicer import SampleDataSources

class SampleDataStandIn:
    """``SampleData.SampleDataLogic`` as far as the module uses it (see the module docstring)."""

    sources = []

    @classmethod
    def registerCustomSampleDataSource(cls, **source):
        cls.sources.append(source)

    @classmethod
    def download(cls, source, folder):
        """What a click on the sample does: download, verify, load; returns the loaded nodes."""
        from MRISynthesisLib.io import load_volume

        nodes = []
        for uri, fileName, nodeName, checksum in zip(source["uris"], source["fileNames"], source["nodeNames"],
                                                     source["checksums"]):
            target = folder / fileName
            urllib.request.urlretrieve(uri, target)
            algorithm, expected = checksum.split(":", 1)
            actual = hashlib.new(algorithm.lower(), target.read_bytes()).hexdigest()
            if actual != expected:
                raise ValueError(f"checksum mismatch for {fileName}")
            volume = load_volume(target)
            nodes.append(slicer.util.addVolumeFromArray(volume.array_kji(), ijkToRAS=volume.affine, name=nodeName))
        return nodes


@pytest.fixture
def sampleData(monkeypatch):
    SampleDataStandIn.sources = []
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataStandIn))
    return SampleDataStandIn


def test_the_pair_is_registered_when_slicer_has_started_and_nothing_is_downloaded(slicerModule, sampleData,
                                                                                  monkeypatch):
    downloads = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: downloads.append(a))
    assert sampleData.sources == []  # loading the module registers nothing yet

    slicer.app.startupCompleted.emit()

    (source,) = sampleData.sources
    assert source["category"] == "MRI Synthesis" and source["sampleName"] == SampleDataSources.SAMPLE_NAME
    assert [uri.rsplit("/", 1)[1] for uri in source["uris"]] == source["fileNames"]
    assert all(uri.startswith("https://raw.githubusercontent.com/muschellij2/open_ms_data/"
                              "65704901f60650824565aa5a4818611aa89716f4/") for uri in source["uris"])
    assert source["nodeNames"] == ["MS patient 19 T1", "MS patient 19 T2"]
    assert all(checksum.startswith("SHA256:") and len(checksum) == 7 + 64 for checksum in source["checksums"])
    assert source["thumbnailFileName"].endswith("MRISynthesis.png")
    assert downloads == []
    layoutNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layoutNode.IsLayoutDescription(18501)  # the same start-up registers the comparison layout


def test_a_registered_sample_downloads_verifies_and_loads_offline(app, sampleData, helpers, tmp_path):
    from MRISynthesisLib.io import write_volume
    from MRISynthesisLib.volume import Volume

    served = tmp_path / "served"
    served.mkdir()
    files = []
    for index, name in enumerate(("t1.nii.gz", "t2.nii.gz")):
        write_volume(Volume(helpers.headPhantomKJI(seed=index).transpose(2, 1, 0), helpers.ijkToRAS()), served / name)
        sha256 = hashlib.sha256((served / name).read_bytes()).hexdigest()
        files.append(SampleDataSources.SampleFile(name, f"sample {index}", sha256))

    SampleDataSources.registerSampleData(sampleData, baseUri=served.as_uri() + "/", files=files)
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    nodes = sampleData.download(sampleData.sources[0], downloaded)

    assert [node.GetName() for node in nodes] == ["sample 0", "sample 1"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes[0]), helpers.headPhantomKJI(seed=0), rtol=1e-6)


def test_a_changed_file_is_refused_by_its_checksum(app, sampleData, helpers, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "t1.nii.gz").write_bytes(b"not the published file")
    files = [SampleDataSources.SampleFile("t1.nii.gz", "T1", SampleDataSources.SAMPLE_FILES[0].sha256)]
    SampleDataSources.registerSampleData(sampleData, baseUri=served.as_uri() + "/", files=files)
    with pytest.raises(ValueError, match="checksum mismatch"):
        sampleData.download(sampleData.sources[0], tmp_path)


def test_the_checksums_are_those_of_the_published_files(shared_data):
    """../shared/data/paired/MSLUB-patient19 holds the same bytes as the pinned commit's files."""
    folder = shared_data / "paired" / "MSLUB-patient19"
    for file in SampleDataSources.SAMPLE_FILES:
        assert hashlib.sha256((folder / file.fileName).read_bytes()).hexdigest() == file.sha256, file.fileName


def test_the_sample_subject_is_not_a_training_subject_of_the_shipped_models():
    from MRISynthesisLib import catalog

    trainingLines = {}
    for entry in catalog.list_models():
        card = (catalog.resources_dir() / entry.card).read_text() if entry.card else ""
        trainingLines[entry.id] = next((line for line in card.splitlines() if "training subjects" in line), "")
    assert "MSLUB-patient07" in trainingLines[catalog.default_model("t1-to-t2").id]  # the cards list them
    assert not [model for model, line in trainingLines.items() if "MSLUB-patient19" in line]
