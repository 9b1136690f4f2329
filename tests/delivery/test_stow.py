"""STOW-RS delivery against a real Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb):
the SR and a Secondary Capture image arrive, outage and recovery, basic and bearer
authentication, HTTPS (through a TLS-terminating proxy) with a private CA, a server that never
answers; and the response classification on its own."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.support.certs import make_pki
from tests.support.orthanc import DicomWeb, OrthancServer, free_port
from tests.support.servers import SilentServer, TcpProxy
from worker.deliver.cstore import DeliveryError, OutcomeKind, StoreReplyStatus
from worker.deliver.destinations import StowDestination, parse_stow_destination
from worker.deliver.stow import classify_response, send_stow

# A Secondary Capture from the shared data stands in for the result image.
SECONDARY_CAPTURE = ("torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201."
                     "850819.dcm")
TOKEN = "t0ken-for-tests"
# Orthanc 1.10 has no bearer tokens; a Lua filter checks the Authorization header instead.
BEARER_FILTER = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if string.sub(uri, 1, 10) == "/dicom-web" then
    return httpHeaders["authorization"] == "Bearer {TOKEN}"
  end
  return true
end
"""


def _stow(server: OrthancServer, options: str = "") -> StowDestination:
    return parse_stow_destination(f"stow+{server.dicomweb_url}{options}")


def _secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def dicomweb(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc", dicomweb=DicomWeb()) as server:
        yield server


@pytest.fixture
def image_file(tmp_path: Path, shared_dicom: Path) -> Path:
    return Path(shutil.copy(shared_dicom / SECONDARY_CAPTURE, tmp_path / "image.dcm"))


def test_sr_and_image_arrive(dicomweb: OrthancServer, sr_file: Path, image_file: Path) -> None:
    destination = _stow(dicomweb)
    for path in (sr_file, image_file):
        outcome = send_stow(path, destination, timeout_s=30)
        assert outcome.kind is OutcomeKind.SENT, outcome.reason
        assert outcome.status == 200 and outcome.warning == ""
    sr_tags = dicomweb.get_instance_tags(dicomweb.find_instance(
        pydicom.dcmread(sr_file).SOPInstanceUID) or "missing")
    assert sr_tags["Modality"] == "SR" and sr_tags["VerificationFlag"] == "UNVERIFIED"
    image = pydicom.dcmread(image_file, stop_before_pixels=True)
    image_tags = dicomweb.get_instance_tags(dicomweb.find_instance(image.SOPInstanceUID)
                                            or "missing")
    assert image_tags["SOPClassUID"] == image.SOPClassUID
    # Sent again: the server already holds it, and says so with a 200.
    assert send_stow(sr_file, destination).kind is OutcomeKind.SENT
    assert len(dicomweb.instances()) == 2


def test_outage_then_recovery(dicomweb: OrthancServer, sr_file: Path) -> None:
    destination = _stow(dicomweb)
    dicomweb.stop()
    down = send_stow(sr_file, destination, connect_timeout_s=2, timeout_s=5)
    assert down.kind is OutcomeKind.RETRY and "no answer from" in down.reason
    dicomweb.start()
    back = send_stow(sr_file, destination)
    assert back.kind is OutcomeKind.SENT, back.reason
    assert len(dicomweb.instances()) == 1


def test_wrong_url_is_failed(dicomweb: OrthancServer, sr_file: Path) -> None:
    destination = parse_stow_destination(f"stow+{dicomweb.rest_url}/no-such-service")
    outcome = send_stow(sr_file, destination)
    assert outcome.kind is OutcomeKind.FAILED and outcome.status == 404
    assert "check the URL" in outcome.reason


def test_basic_authentication(tmp_path: Path, sr_file: Path) -> None:
    web = DicomWeb(users={"triage": "c0rrect horse"})
    with OrthancServer(tmp_path / "orthanc", dicomweb=web) as server:
        good = _secret(tmp_path, "basic", "triage:c0rrect horse")
        sent = send_stow(sr_file, _stow(server, f";basic={good}"))
        assert sent.kind is OutcomeKind.SENT, sent.reason
        bad = _secret(tmp_path, "bad", "triage:wrong")
        refused = send_stow(sr_file, _stow(server, f";basic={bad}"))
        anonymous = send_stow(sr_file, _stow(server))
        assert len(server.instances()) == 1
    assert refused.kind is OutcomeKind.FAILED and refused.status == 401
    assert "check token= or basic=" in refused.reason
    assert anonymous.kind is OutcomeKind.FAILED and anonymous.status == 401


def test_bearer_token(tmp_path: Path, sr_file: Path) -> None:
    script = tmp_path / "bearer.lua"
    script.write_text(BEARER_FILTER)
    with OrthancServer(tmp_path / "orthanc", dicomweb=DicomWeb(lua_scripts=(script,))) as server:
        token = _secret(tmp_path, "token", TOKEN)
        sent = send_stow(sr_file, _stow(server, f";token={token}"))
        assert sent.kind is OutcomeKind.SENT, sent.reason
        other = _secret(tmp_path, "other", "not-the-token")
        refused = send_stow(sr_file, _stow(server, f";token={other}"))
        assert len(server.instances()) == 1
    assert refused.kind is OutcomeKind.FAILED and refused.status == 403


def test_credential_files_that_cannot_be_used(tmp_path: Path, sr_file: Path) -> None:
    url = f"stow+http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DeliveryError, match="cannot read the bearer token file"):
        send_stow(sr_file, parse_stow_destination(f"{url};token={tmp_path / 'missing'}"))
    empty = _secret(tmp_path, "empty", "")
    with pytest.raises(DeliveryError, match="is empty"):
        send_stow(sr_file, parse_stow_destination(f"{url};token={empty}"))
    no_colon = _secret(tmp_path, "user", "just-a-user")
    with pytest.raises(DeliveryError, match="user:password"):
        send_stow(sr_file, parse_stow_destination(f"{url};basic={no_colon}"))


def test_https_with_a_private_ca(dicomweb: OrthancServer, tmp_path: Path, sr_file: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    proxy = TcpProxy(dicomweb.http_port, tls=tls).start()  # HTTPS in front of Orthanc
    try:
        url = f"stow+https://127.0.0.1:{proxy.port}/dicom-web"
        sent = send_stow(sr_file, parse_stow_destination(f"{url};ca={pki.ca_cert}"))
        unverified = send_stow(sr_file, parse_stow_destination(url))  # not a system CA
    finally:
        proxy.stop()
    assert sent.kind is OutcomeKind.SENT, sent.reason
    assert unverified.kind is OutcomeKind.RETRY and "check ca=" in unverified.reason
    assert len(dicomweb.instances()) == 1


def test_a_server_that_never_answers_is_retried(sr_file: Path) -> None:
    with SilentServer() as silent:
        destination = parse_stow_destination(
            f"stow+http://127.0.0.1:{silent.port}/dicom-web;timeout=1")
        outcome = send_stow(sr_file, destination, timeout_s=600)  # the destination's wins
        assert silent.accepted == 1
    assert outcome.kind is OutcomeKind.RETRY and "ReadTimeout" in outcome.reason


def test_shadow_is_not_contacted(sr_file: Path) -> None:
    destination = parse_stow_destination(f"stow+http://127.0.0.1:{free_port()}/x;shadow")
    assert send_stow(sr_file, destination).kind is OutcomeKind.SHADOW


# --- Classification of STOW-RS responses (PS3.18 10.5.3), without a server -------------------

OURS = "1.2.826.0.1.3680043.8.498.1"
OTHER = "1.2.826.0.1.3680043.8.498.2"


def _response(failed: dict[str, int] | None = None,
              warnings: dict[str, int] | None = None) -> Dataset:
    body = Dataset()
    if failed:
        body.FailedSOPSequence = [_item(uid, FailureReason=reason)
                                  for uid, reason in failed.items()]
    body.ReferencedSOPSequence = [_item(uid, WarningReason=reason)
                                  for uid, reason in (warnings or {}).items()]
    return body


def _item(uid: str, **values: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    item.ReferencedSOPInstanceUID = uid
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (200, _response(), OutcomeKind.SENT, ""),
        (200, _response(warnings={OURS: 0xB000}), OutcomeKind.SENT, "WarningReason 0xB000"),
        (202, _response(failed={OTHER: 0xC000}), OutcomeKind.SENT, "1 other instances failed"),
        (202, _response(failed={OURS: 0xC000}), OutcomeKind.FAILED, "FailureReason 0xC000"),
        (409, _response(failed={OURS: 0x0110}), OutcomeKind.FAILED, "FailureReason 0x0110"),
        (409, _response(failed={OURS: StoreReplyStatus.REFUSED_OUT_OF_RESOURCES | 1}),
         OutcomeKind.RETRY, "FailureReason 0xA701"),
        (409, None, OutcomeKind.FAILED, "refused the instance"),
        (400, None, OutcomeKind.FAILED, "HTTP 400"),
        (401, None, OutcomeKind.FAILED, "check token= or basic="),
        (408, None, OutcomeKind.RETRY, "will retry"),
        (429, None, OutcomeKind.RETRY, "will retry"),
        (500, None, OutcomeKind.RETRY, "will retry"),
        (503, None, OutcomeKind.RETRY, "will retry"),
    ],
)
def test_classify_response(status: int, body: Dataset | None, kind: OutcomeKind,
                           text: str) -> None:
    outcome = classify_response(status, body, OURS, "stow+https://archive/dicom-web")
    assert outcome.kind is kind
    assert outcome.status == status
    assert text in (outcome.warning if kind is OutcomeKind.SENT else outcome.reason)
