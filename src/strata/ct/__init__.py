"""Chest CT: study layout, DICOM/NIfTI reading, preprocessing to cached tensors, demo data."""
