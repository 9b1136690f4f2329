"""Client TLS for every channel that speaks it (C-STORE, Storage Commitment, HL7 over MLLP)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: Path | None, cert_file: Path | None,
                   key_file: Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the peer against ``ca_file`` (or the system
    CAs), with an optional client certificate. Raises ``OSError``/``ssl.SSLError`` when the
    material can't be read; callers say which destination it belongs to."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context
