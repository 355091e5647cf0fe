"""MRML glue of the MRISynthesis Slicer module.

Everything here works on a plain ``vtkMRMLScene`` (real Slicer or the ``slicer-core`` wheel) and
never imports ``qt``, ``ctk`` or ``slicer.app``, so it is tested with pytest outside Slicer.
Image processing (orientation, normalisation, models, metrics) is not done here: it is
MRISynthesisLib's job; this package only moves arrays and geometry between nodes and the core.
"""
