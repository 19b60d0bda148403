"""Image input/output: CT volumes from NIfTI, NRRD, MetaImage files and DICOM series folders."""

from LiverSegLib.io.image_io import MAX_VOXELS, output_extension_for, read_volume, write_volume

__all__ = ["read_volume", "write_volume", "output_extension_for", "MAX_VOXELS"]
