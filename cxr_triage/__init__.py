"""cxr-triage: DICOM-integrated triage of chest radiographs (the top shell: the command line,
``up``, ``demo``, ``nightly`` and the synthetic data)."""

from common.version import package_version

__version__ = package_version()

__all__ = ["__version__"]
