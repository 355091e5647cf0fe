"""The repository must stay small enough for the Slicer Extensions Index.

The index refuses an extension whose full clone (working tree and ``.git``) is larger than 100 MB.
Every weight file ever committed stays in the history, and fp16 weights barely compress, so a new
model costs about twice its file size (once in the checkout, once in ``.git``). This test measures
what a user's clone of the current commit weighs: a bare single-branch clone without tags, plus the
files of ``HEAD``.
"""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: the Slicer Extensions Index's limit on a full clone
CLONE_LIMIT_BYTES = 100 * 1000 ** 2


def _git(*args, cwd=REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_a_full_clone_fits_the_slicer_extensions_index_limit(tmp_path):
    try:
        if _git("rev-parse", "--is-inside-work-tree").strip() != "true":
            pytest.skip("not a git checkout: the clone size cannot be measured")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (or git missing): the clone size cannot be measured")
    if _git("rev-parse", "--is-shallow-repository").strip() == "true":
        pytest.skip("a shallow clone lacks the history whose size is measured")
    clone = tmp_path / "clone.git"
    _git("clone", "--quiet", "--bare", "--no-local", "--single-branch", "--no-tags", str(REPO), str(clone),
         cwd=tmp_path)
    history = sum(f.stat().st_size for f in clone.rglob("*") if f.is_file())
    # ls-tree -l: "<mode> blob <sha> <size>\t<path>" for every file of the commit
    checkout = sum(int(line.split()[3]) for line in _git("ls-tree", "-r", "-l", "HEAD", cwd=clone).splitlines()
                   if line.split()[1] == "blob")
    total = history + checkout
    print(f"full clone: {total / 1e6:.1f} MB (.git {history / 1e6:.1f} MB + files {checkout / 1e6:.1f} MB); "
          f"limit {CLONE_LIMIT_BYTES / 1e6:.0f} MB")
    assert total < CLONE_LIMIT_BYTES, (
        f"a full clone would be {total / 1e6:.1f} MB (.git {history / 1e6:.1f} MB + files {checkout / 1e6:.1f} MB), "
        f"over the Slicer Extensions Index's {CLONE_LIMIT_BYTES / 1e6:.0f} MB: ship smaller models")
