"""The Application Entity: which SOP classes and transfer syntaxes the node accepts (PS3.4 B.5)."""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE

from dicom_node.settings import NodeSettings

VERIFICATION = UID("1.2.840.10008.1.1")  # PS3.4 Annex A
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
ACCEPTED_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)


def storage_sop_classes(settings: NodeSettings) -> tuple[str, ...]:
    """The storage SOP classes accepted as SCP; Secondary Capture only when configured."""
    extra = (SecondaryCaptureImageStorage,) if settings.accept_secondary_capture else ()
    return (*RADIOGRAPH_SOP_CLASSES, *extra)


def build_ae(settings: NodeSettings) -> AE:
    """An AE with Verification and the storage contexts; every other SOP class is refused."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(VERIFICATION)
    for sop_class in storage_sop_classes(settings):
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    ae.require_called_aet = True
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu
    return ae
