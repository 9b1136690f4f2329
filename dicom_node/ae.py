"""The Application Entity: which SOP classes and transfer syntaxes the node accepts (PS3.4 B.5).

Every transfer syntax listed here is one the worker's decoders (pydicom with pylibjpeg-libjpeg,
pylibjpeg-openjpeg, pylibjpeg-rle and pyjpegls) can decode; tests/integration/
test_transfer_syntaxes.py sends and scores each one, and docs/conformance.md lists them.
"""

from __future__ import annotations

from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, dimse_messages
from pynetdicom.dsutils import create_file_meta

from common.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from common.dicom_ids import IMPLEMENTATION_CLASS_UID, implementation_version_name
from dicom_node.settings import NodeSettings

VERIFICATION = UID("1.2.840.10008.1.1")  # PS3.4 Annex A
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
# Preference order when a context proposes several: lossless and cheap to decode first.
ACCEPTED_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,  # retired (PS3.5 A.3) but still sent by old modalities
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
)


def storage_sop_classes(settings: NodeSettings) -> tuple[str, ...]:
    """The storage SOP classes accepted as SCP; Secondary Capture only when configured."""
    extra = (SecondaryCaptureImageStorage,) if settings.accept_secondary_capture else ()
    return (*RADIOGRAPH_SOP_CLASSES, *extra)


def _our_file_meta(*, sop_class_uid: UID, sop_instance_uid: UID, transfer_syntax: UID,
                   **_pynetdicom_defaults: object) -> FileMetaDataset:
    """pynetdicom's file meta for a received dataset, naming us as the writer (PS3.10 7.1)."""
    return create_file_meta(
        sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
        transfer_syntax=transfer_syntax, implementation_uid=UID(IMPLEMENTATION_CLASS_UID),
        implementation_version=implementation_version_name(),
    )


def build_ae(settings: NodeSettings) -> AE:
    """An AE with Verification, the storage contexts and Storage Commitment Push Model (for the
    reports of our commitment requests); every other SOP class is refused.

    The AE and the files it stores carry our Implementation Class UID and version name
    (:mod:`common.dicom_ids`), not pynetdicom's. pynetdicom writes the file meta of a received
    dataset itself (chunked receive) with no setting for the implementation, so the node
    replaces the one function it calls for that.
    """
    dimse_messages.create_file_meta = _our_file_meta
    ae = AE(ae_title=settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = implementation_version_name()
    ae.add_supported_context(VERIFICATION)
    # N-EVENT-REPORTs of Storage Commitment requests our deliveries made (dicom_node.commitment):
    # the PACS opens the association and takes the SCP role (PS3.4 J.3.3, PS3.7 D.3.3.4).
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian,
                                                             ImplicitVRLittleEndian],
                             scu_role=False, scp_role=True)
    for sop_class in storage_sop_classes(settings):
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    ae.require_called_aet = True
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu
    return ae
