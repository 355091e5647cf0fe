"""MRISynthesisLib: pure-Python core of MRISynthesis (no slicer, qt or vtk imports).

Data flows one way: volume + 4x4 index-to-RAS matrix -> canonical axial slice stack ->
model -> slice stack -> volume with exactly the input's geometry.
"""

__version__ = "0.1.0"
