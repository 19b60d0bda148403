"""The ``liverseg`` command line (``python -m LiverSegLib``)."""
