"""TLS for the listener (PS3.15 Annex B secure transport)."""

from __future__ import annotations

import ssl

from dicom_node.errors import NodeError
from dicom_node.settings import TlsSettings


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """A server context, or ``None`` without a certificate. A CA requires client certificates."""
    if settings.cert is None:
        return None
    if settings.key is None:
        raise NodeError("TRIAGE_TLS_CERT is set but TRIAGE_TLS_KEY is not: give both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(settings.cert), keyfile=str(settings.key))
        if settings.ca is not None:
            context.load_verify_locations(cafile=str(settings.ca))
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            context.verify_mode = ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise NodeError(f"can't load TLS certificate, key or CA: {exc}") from exc
    return context
