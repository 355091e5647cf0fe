"""A T1/T2 sample pair in Slicer's *Sample Data* module, so a new user can try the comparison with a
real reference in two clicks. Nothing is downloaded until the user clicks the sample.

The pair: patient 19 of the Ljubljana 3D MR image database of multiple sclerosis patients (Lesjak et
al., Neuroinformatics 2017; CC BY), skull-stripped, N4-corrected and registered to MNI space, as
published in the ``muschellij2/open_ms_data`` repository on GitHub. The URLs are pinned to one
commit of that repository, and each SHA-256 was computed from that commit's file (a plain git blob);
the same bytes are in ``../shared/data/paired/MSLUB-patient19`` (a test checks the checksums against
them). Patient 19 is not among the training subjects of the shipped models (their model cards list
them), so the comparison it shows is a fair one.
"""

from dataclasses import dataclass

#: The commit of github.com/muschellij2/open_ms_data the files are taken from.
OPEN_MS_DATA_COMMIT = "65704901f60650824565aa5a4818611aa89716f4"
BASE_URI = (f"https://raw.githubusercontent.com/muschellij2/open_ms_data/{OPEN_MS_DATA_COMMIT}/"
            "cross_sectional/MNI/patient19/")
CATEGORY = "MRI Synthesis"
ATTRIBUTION = ("Ljubljana MS database (Lesjak et al., Neuroinformatics 2017, doi:10.1007/s12021-017-9348-7), "
               "CC BY 3.0")


@dataclass(frozen=True)
class SampleFile:
    fileName: str
    nodeName: str
    sha256: str


SAMPLE_NAME = "MRISynthesisMSPatient19"
SAMPLE_FILES = (
    SampleFile("T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", "MS patient 19 T1",
               "24ea608f6817c9799888491988f9ec9464f0f2faa02f512e8c2e07466f705781"),
    SampleFile("T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", "MS patient 19 T2",
               "585d38f7c3714594be60d5ebb13b4b20a9294d6804ce2d6e0e8f170f530a87e2"),
)


def registerSampleData(sampleDataLogic, baseUri=BASE_URI, files=SAMPLE_FILES, thumbnail=None) -> None:
    """Register the pair with ``sampleDataLogic`` (``SampleData.SampleDataLogic``): one sample that
    loads both volumes, each file checked against its SHA-256 after the download."""
    sampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME,
        uris=[baseUri + file.fileName for file in files], fileNames=[file.fileName for file in files],
        nodeNames=[file.nodeName for file in files], checksums=[f"SHA256:{file.sha256}" for file in files],
        thumbnailFileName=thumbnail, loadFileType="VolumeFile")
