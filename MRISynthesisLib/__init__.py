"""MRISynthesisLib: pure-Python core of MRISynthesis (no slicer, qt or vtk imports).

Data flows one way: volume + 4x4 index-to-RAS matrix -> canonical axial slice stack ->
model -> slice stack -> volume with exactly the input's geometry.

The public API: the modules in :data:`PUBLIC_MODULES`, and in each of them the names in its
``__all__``. Training, the Slicer module, benchmarks and studies import only these
(``Testing/Python/test_layering.py`` checks every import; ``docs/architecture.md`` lists them).
The other modules (the BIDS App, the QC report, NRRD reading, the demo, the preview) are reached
through the command line or through a public module.
"""

__version__ = "0.1.0"

#: The modules other packages may import from (each declares its public names in ``__all__``).
PUBLIC_MODULES = ("atomic", "brain_extraction", "catalog", "checkpoint", "cli", "conventions", "device", "engines",
                  "errors", "input_check", "io", "metrics", "models", "orientation", "pipeline", "preprocessing",
                  "synthesis", "volume", "worker")
