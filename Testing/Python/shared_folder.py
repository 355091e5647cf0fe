"""Where the tests find ``../shared`` (real MRI data, Slicer's framework): one definition.

``../shared`` sits beside the repository on developer machines and in CI; a fresh clone has none,
and every test that needs it skips with the reason. ``MRISYNTHESIS_SHARED=none`` (or another
folder) overrides the location, e.g. to run the suite as a fresh clone would:
``MRISYNTHESIS_SHARED=none bash run.sh test``.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_OVERRIDE = os.environ.get("MRISYNTHESIS_SHARED", "")
#: The shared folder (may not exist).
SHARED = (REPO.parent / "shared" if not _OVERRIDE else
          Path("/nonexistent/mrisynthesis-shared") if _OVERRIDE.lower() == "none" else Path(_OVERRIDE))
#: Real MRI data: paired/, raw/, templates/ (see its README.md).
SHARED_DATA = SHARED / "data"
#: Co-registered, skull-stripped T1/T2 pairs, one folder per subject.
PAIRED = SHARED_DATA / "paired"
