"""Data: NIfTI I/O, nnU-Net raw layout, DICOM conversion, the phantom, ROI preparation."""
