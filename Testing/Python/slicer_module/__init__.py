# A package (not a loose folder) so that pytest imports this folder's conftest as
# "slicer_module.conftest" and leaves the top-level name "conftest" to Testing/Python/conftest.py,
# whose helpers the core tests import. The folder is not called "slicer": that would shadow the
# slicer-core package.
