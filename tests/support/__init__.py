"""Helpers shared by the test suite: real servers, real DICOM peers, generated data."""
