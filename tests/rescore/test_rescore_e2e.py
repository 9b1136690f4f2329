"""Re-scoring end to end: storescu -> node -> rescore (model A, then B) -> Orthanc.

Model A (threshold 0) calls every study suspected; model B has other random weights and a
threshold between its study results, so about half the studies change decision. Only those
get a new SR, and each new SR names model A's SR in its Predecessor Documents Sequence.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.rescore.conftest import (
    cli,
    cli_env,
    ensemble_means,
    query,
    set_threshold,
    write_study,
)
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.worker.conftest import build_ensemble
from tests.worker.processes import wait_until

pytestmark = pytest.mark.integration
STUDY_SIZES = (1, 2, 1, 2, 1, 1)


def _orthanc_sr(orthanc: OrthancServer, sop_uid: str) -> Dataset:
    orthanc_id = orthanc.find_instance(sop_uid)
    assert orthanc_id is not None, f"SR {sop_uid} is not in Orthanc"
    with urllib.request.urlopen(f"{orthanc.rest_url}/instances/{orthanc_id}/file") as response:
        return dcmread(io.BytesIO(response.read()))


def _predecessor_uids(sr: Dataset) -> set[str]:
    return {str(sop.ReferencedSOPInstanceUID)
            for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence}


def _model_b(tmp_path: Path, studies: list[list[Path]]) -> tuple[Path, set[str]]:
    """Model B and the studies whose B result falls below its threshold (A said suspected)."""
    model_b = build_ensemble(tmp_path / "model_b", seed=7, label="model B")
    files = [f for study in studies for f in study]
    means = dict(zip(files, ensemble_means(model_b, files), strict=True))
    study_max = sorted((max(means[f] for f in study), str(dcmread(study[0]).StudyInstanceUID))
                       for study in studies)
    cut = len(study_max) // 2
    threshold = (study_max[cut - 1][0] + study_max[cut][0]) / 2
    set_threshold(model_b, threshold)
    return model_b, {uid for _, uid in study_max[:cut]}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_rescore_sends_srs_only_for_changed_studies(
    tmp_path: Path, db_url: str, tiny_ensemble: Path
) -> None:
    orthanc = OrthancServer(tmp_path / "orthanc", allowed_callers=("CXR_TRIAGE",)).start()
    node = NodeProcess(tmp_path / "node", db_url, "filesystem://").start()
    try:
        studies = [write_study(tmp_path / "in" / f"s{i}", n, brightness=(i + 1) / len(STUDY_SIZES))
                   for i, n in enumerate(STUDY_SIZES)]
        files = [f for study in studies for f in study]
        assert len(storescu(node.port, files).succeeded) == len(files)
        wait_until(lambda: len(node.instances()) == len(files), 30, "instances recorded",
                   node.log)
        env = cli_env(tmp_path, db_url, tiny_ensemble,
                      TRIAGE_STORAGE_DIR=str(node.storage),
                      TRIAGE_DESTINATIONS=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")

        # Model A is the live model: the backlog is scored and every study gets an SR.
        first = cli(env, "rescore", "--send", "all")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"scored by this run       {len(files)}" in first.stdout
        assert f"reports written          {len(studies)}" in first.stdout
        assert len(orthanc.instances()) == len(studies)
        a_reports = {str(uid): str(sop) for uid, sop in query(db_url, (
            "SELECT s.study_instance_uid, r.sr_sop_instance_uid FROM report r "
            "JOIN study s ON s.id = r.study_id"))}

        model_b, expected = _model_b(tmp_path, studies)
        # B is not live: by default its results are recorded, never sent (issue 13).
        default = cli(env, "rescore", "--model", str(model_b), "--dry-run")
        assert default.returncode == 0, default.stdout + default.stderr
        assert "is not the live model" in default.stdout
        assert "reports a real run writes 0 (--send none)" in default.stdout
        dry = cli(env, "rescore", "--model", str(model_b), "--send", "changed", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"studies changed          {len(expected)}" in dry.stdout
        assert f"reports a real run writes {len(expected)}" in dry.stdout
        assert len(orthanc.instances()) == len(studies)  # the dry runs sent nothing
        second = cli(env, "rescore", "--model", str(model_b), "--send", "changed")
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"studies changed          {len(expected)}" in second.stdout
        assert f"reports written          {len(expected)}" in second.stdout
        assert all(uid in second.stdout for uid in expected)
        assert f"deliveries               sent {len(expected)}" in second.stdout
        b_reports = query(db_url, (
            "SELECT s.study_instance_uid, r.sr_sop_instance_uid, r.decision, "
            "p.sr_sop_instance_uid FROM report r JOIN study s ON s.id = r.study_id "
            "JOIN report p ON p.id = r.predecessor_id "
            "WHERE r.model_version <> (SELECT model_version FROM report ORDER BY id LIMIT 1)"))
        assert {str(r[0]) for r in b_reports} == expected
        for study_uid, sop_uid, decision, predecessor in b_reports:
            assert decision == "not_suspected" and predecessor == a_reports[str(study_uid)]
            sr = _orthanc_sr(orthanc, str(sop_uid))
            assert _predecessor_uids(sr) == {a_reports[str(study_uid)]}
            assert sr.StudyInstanceUID == study_uid
        assert len(orthanc.instances()) == len(studies) + len(expected)

        # The same command again: nothing to score, nothing to send.
        again = cli(env, "rescore", "--model", str(model_b), "--send", "changed")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "scored by this run       0" in again.stdout
        assert "reports written          0" in again.stdout
        assert len(orthanc.instances()) == len(studies) + len(expected)
        (scores,) = query(db_url, "SELECT count(*) FROM score")[0]
        assert scores == 2 * len(files)
        runs = query(db_url, "SELECT status, scored FROM rescore_run ORDER BY id")
        assert runs == [("succeeded", len(files)), ("succeeded", len(files)), ("succeeded", 0)]

        png = tmp_path / "drift.png"
        drift = cli(env, "drift", "--out", str(png))
        assert drift.returncode in (0, 4), drift.stdout + drift.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "Model versions" in drift.stdout
        assert (drift.returncode == 4) == ("WARNING: drift" in drift.stdout)
    finally:
        node.stop()
        orthanc.stop()
