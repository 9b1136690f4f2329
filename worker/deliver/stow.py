"""Deliver a DICOM file to a DICOMweb STOW-RS service and classify the response (PS3.18 10.5).

Built on ``dicomweb-client`` (its own HTTP retries are off: the delivery's backoff and horizon
decide). The response is sorted as C-STORE replies are (``worker.deliver.cstore``):

* ``sent``: 200, or 202 with our instance among the stored ones; a 202, or a warning in our
  instance's ``WarningReason``, is kept as the delivery's warning.
* ``failed``: our instance in the ``FailedSOPSequence`` (of a 409, a 202 or even a 200) with
  any ``FailureReason`` but a lack of resources, 401/403 (credentials), 409 and any other 4xx;
  retrying won't help.
* ``retry``: no connection, a timeout, a TLS handshake that failed, 408, 429, any 5xx, or a
  ``FailureReason`` saying the server is short of resources (0xA7xx, 0x0213).

A ``shadow`` destination is never contacted.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from worker.deliver.cstore import (
    DeliveryError,
    DeliveryOutcome,
    OutcomeKind,
    StoreReplyStatus,
    named_status,
)
from worker.deliver.destinations import StowDestination

logger = logging.getLogger(__name__)

# FailureReasons (PS3.4 B.2.3) worth retrying: the server is short of resources. Any other
# reason for our instance (0x0110 included, unlike C-STORE: a 409 says the server refused it)
# is permanent.
_TRANSIENT = frozenset({StoreReplyStatus.REFUSED_OUT_OF_RESOURCES,
                        StoreReplyStatus.RESOURCE_LIMITATION})
_RETRY_HTTP = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
_HINTS: dict[int, str] = {
    HTTPStatus.UNAUTHORIZED: "; check token= or basic=",
    HTTPStatus.FORBIDDEN: "; check token= or basic= and the account's rights",
    HTTPStatus.NOT_FOUND: "; check the URL (the service root, e.g. /dicom-web)",
    HTTPStatus.CONFLICT: "; the server refused the instance",
}
_CHUNK_BYTES = 1 << 28  # one request body, no chunked transfer encoding, up to 256 MiB


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeliveryError(f"cannot read the {what} file {path}: {exc}") from exc
    if not text:
        raise DeliveryError(f"the {what} file {path} is empty")
    return text.splitlines()[0].strip()


def _session(destination: StowDestination) -> requests.Session:
    """An HTTP session: CA bundle, and credentials read from their files at each attempt.

    The environment is not consulted (``trust_env``): ``REQUESTS_CA_BUNDLE`` would override
    ``ca=``, proxies and ``~/.netrc`` would change where and as whom we post.
    """
    session = requests.Session()
    session.trust_env = False
    if destination.ca_file is not None:
        if not destination.ca_file.is_file():
            raise DeliveryError(f"CA bundle {destination.ca_file} of {destination.label} "
                                "not found; check ca=")
        session.verify = str(destination.ca_file)
    if destination.token_file is not None:
        token = _read_secret(destination.token_file, "bearer token")
        session.headers["Authorization"] = f"Bearer {token}"
    if destination.basic_file is not None:
        user, sep, password = _read_secret(destination.basic_file, "user:password").partition(":")
        if not sep or not user:
            raise DeliveryError(f"{destination.basic_file} must hold user:password")
        session.auth = (user, password)
    return session


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise DeliveryError(f"cannot read {path} for delivery: {exc}") from exc


def _body(response: requests.Response | None) -> Dataset | None:
    """The STOW-RS response dataset (PS3.18 10.5.3), when it came as DICOM JSON."""
    if response is None or not response.content:
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def _failure(body: Dataset | None, sop_instance_uid: str) -> int | None:
    """Our instance's FailureReason in the FailedSOPSequence (0 when listed without one)."""
    for item in getattr(body, "FailedSOPSequence", None) or []:
        if item.get("ReferencedSOPInstanceUID") == sop_instance_uid:
            return int(item.get("FailureReason", 0) or 0)
    return None


def _warning(body: Dataset | None, sop_instance_uid: str) -> int | None:
    """Our instance's WarningReason in the ReferencedSOPSequence, if the server gave one."""
    for item in getattr(body, "ReferencedSOPSequence", None) or []:
        if item.get("ReferencedSOPInstanceUID") == sop_instance_uid and "WarningReason" in item:
            return int(item.WarningReason)
    return None


def classify_response(status: int, body: Dataset | None, sop_instance_uid: str,
                      label: str) -> DeliveryOutcome:
    """Map a STOW-RS HTTP status and response dataset to an outcome (PS3.18 10.5.3)."""
    failure = _failure(body, sop_instance_uid)
    if failure is not None:
        kind = OutcomeKind.RETRY if named_status(failure) in _TRANSIENT else OutcomeKind.FAILED
        return DeliveryOutcome(kind, f"{label} answered HTTP {status}: instance failed with "
                               f"FailureReason 0x{failure:04X}", status=status, destination=label)
    if status in (HTTPStatus.OK, HTTPStatus.ACCEPTED):
        reason = f"{label} answered HTTP {status}"
        warning = _warning(body, sop_instance_uid)
        notes = []
        if warning is not None:
            notes.append(f"WarningReason 0x{warning:04X}")
        if status == HTTPStatus.ACCEPTED:
            others = len(getattr(body, "FailedSOPSequence", None) or [])
            notes.append(f"202 Accepted with warnings ({others} other instances failed)")
        text = f"{reason}: {'; '.join(notes)}" if notes else ""
        return DeliveryOutcome(OutcomeKind.SENT, reason, status=status, destination=label,
                               warning=text)
    if status >= 500 or status in _RETRY_HTTP:
        return DeliveryOutcome(OutcomeKind.RETRY, f"{label} answered HTTP {status}; will retry",
                               status=status, destination=label)
    hint = _HINTS.get(status, "")
    return DeliveryOutcome(OutcomeKind.FAILED, f"{label} answered HTTP {status}{hint}",
                           status=status, destination=label)


def send_stow(path: Path, destination: StowDestination, *, connect_timeout_s: float = 10.0,
              timeout_s: float = 60.0) -> DeliveryOutcome:
    """POST one DICOM file to ``{url}/studies/{StudyInstanceUID}`` and classify the answer.

    ``timeout_s`` (the destination's ``timeout=`` wins) bounds each read of the response,
    ``connect_timeout_s`` the TCP connect. Never raises for network or server problems: they
    come back as ``retry`` or ``failed``. Raises ``DeliveryError`` when the file, the CA bundle
    or a credential file can't be read.
    """
    label = destination.label
    if destination.shadow:
        logger.info("%s: shadow destination, %s not sent", label, Path(path).name)
        return DeliveryOutcome(OutcomeKind.SHADOW, "shadow destination: recorded, not sent",
                               destination=label)
    ds = _read(Path(path))
    sop_instance_uid = str(ds.SOPInstanceUID)
    read_s = destination.timeout_s or timeout_s
    responses: list[requests.Response] = []
    with _session(destination) as session:
        client = DICOMwebClient(destination.url, session=session, chunk_size=_CHUNK_BYTES,
                                timeout=(connect_timeout_s, read_s),
                                callback=lambda response, *_, **__: responses.append(response))
        client.set_http_retry_params(retry=False)
        outcome = _post(client, ds, label, responses)
    logger.info("%s: STOW-RS of SOP Instance %s -> %s (%s)", label, sop_instance_uid,
                outcome.kind.value, outcome.warning or outcome.reason)
    return outcome


def _post(client: DICOMwebClient, ds: Dataset, label: str,
          responses: list[requests.Response]) -> DeliveryOutcome:
    sop_instance_uid = str(ds.SOPInstanceUID)
    try:
        client.store_instances([ds], study_instance_uid=str(ds.StudyInstanceUID))
    except requests.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else 0
        return classify_response(status, _body(response), sop_instance_uid, label)
    except requests.exceptions.SSLError as exc:
        return DeliveryOutcome(OutcomeKind.RETRY, f"TLS with {label} failed ({_first_line(exc)}); "
                               "check ca= and the server certificate", destination=label)
    except (requests.ConnectionError, requests.Timeout) as exc:
        return DeliveryOutcome(OutcomeKind.RETRY, f"no answer from {label}: "
                               f"{type(exc).__name__}", destination=label)
    except ValueError as exc:  # a 2xx whose body dicomweb-client can't read
        return DeliveryOutcome(OutcomeKind.FAILED, f"{label}: unreadable STOW-RS response "
                               f"({exc})", destination=label)
    response = responses[-1] if responses else None
    status = response.status_code if response is not None else HTTPStatus.OK
    return classify_response(status, _body(response), sop_instance_uid, label)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
