"""Reporting: the study result, SR content and codes, the model identity."""
