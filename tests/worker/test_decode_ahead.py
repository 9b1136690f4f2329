"""Live scoring decodes the next batch while the current one is predicted (issue 16), on SQLite
and PostgreSQL: the overlap happens, results and claims are those of the serial path, and
nothing is lost when a batch decoded ahead has an undecodable image or a prediction fails. With
a real ensemble the images are decoded in the decoding process, to the same tensors."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, InstanceStatus, Score
from tests.support.syntaxes import write_in
from tests.worker.conftest import AddInstance, load_cpu, scoring_options
from tests.worker.fakes import FixedPredictor
from worker.score.ahead import decode_ahead, decoder_pid
from worker.score.batch import ImageRef, decode_batch
from worker.score.ensemble import BatchPrediction, Ensemble
from worker.score.live import ScoreRun, ScoringOptions, score_instances

# 6 instances in batches of 2: one task scores them as a chain of 3 batches
BATCH = 2
COUNT = 6


class RecordingPredictor(FixedPredictor):
    """A predictor that logs each decode and predict, with the thread that ran it.

    With ``hold_first_predict`` the first predict waits until an image has started decoding
    on another thread (or ``wait_s`` passed), so a decode-ahead that happens is always seen
    inside the first predict; one that doesn't happen shows as decodes after it.
    """

    def __init__(self, hold_first_predict: bool = False, wait_s: float = 60.0) -> None:
        super().__init__(threshold=0.5)
        self.events: list[tuple[str, str, str]] = []  # (what, file or batch, thread name)
        self._lock = threading.Lock()
        self._decoding_elsewhere = threading.Event()
        self._hold = hold_first_predict
        self._wait_s = wait_s
        self._predicts = 0
        self.fail_predict = False

    def _log(self, what: str, subject: str) -> None:
        with self._lock:
            self.events.append((what, subject, threading.current_thread().name))

    def preprocess(self, path: Path) -> torch.Tensor:
        self._log("decode", path.name)
        if threading.current_thread() is not threading.main_thread():
            self._decoding_elsewhere.set()
        return super().preprocess(path)

    def predict(self, batch: torch.Tensor) -> BatchPrediction:
        self._predicts += 1
        number = str(self._predicts)
        self._log("predict-start", number)
        if self.fail_predict:
            raise RuntimeError("inference failed")
        if self._hold and self._predicts == 1:
            self._decoding_elsewhere.wait(self._wait_s)  # synchronisation, not a timing check
        result = super().predict(batch)
        self._log("predict-end", number)
        return result


def _add(add_instance: AddInstance, sessions: sessionmaker[Session],
         predictor: FixedPredictor, count: int = COUNT) -> list[int]:
    """``count`` queued instances of one study, each with its own probability."""
    study = generate_uid()
    ids = [add_instance(study, seed=i) for i in range(count)]
    with sessions() as session:
        for index, instance_id in enumerate(ids):
            path = session.get(Instance, instance_id).file_path  # type: ignore[union-attr]
            predictor.probabilities[path] = 0.1 + 0.1 * index
    return ids


def _options(decode_ahead: bool = True) -> ScoringOptions:
    return scoring_options("test", score_batch=BATCH, indeterminate_std=1.0,
                           decode_ahead=decode_ahead)


def _scores(sessions: sessionmaker[Session]) -> dict[int, tuple[float, int]]:
    """instance id -> (mean probability, batch size) of its recorded score."""
    with sessions() as session:
        return {s.instance_id: (round(s.probability_mean, 6), s.batch_size)
                for s in session.scalars(select(Score))}


def _statuses(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as session:
        return {i.id: i.status for i in session.scalars(select(Instance))}


def test_the_next_batch_is_decoded_while_the_current_one_is_predicted(
    sessions: sessionmaker[Session], add_instance: AddInstance
) -> None:
    predictor = RecordingPredictor(hold_first_predict=True)
    ids = _add(add_instance, sessions, predictor)
    recorded: list[ScoreRun] = []

    run = score_instances(sessions, ids[0], "task", lambda: predictor, _options(),
                          on_recorded=recorded.append)

    events = predictor.events
    first_end = events.index(("predict-end", "1", threading.main_thread().name))
    ahead = [i for i, (what, _, thread) in enumerate(events)
             if what == "decode" and thread.startswith("decode-ahead")]
    assert ahead, "no image was decoded on the decode-ahead thread"
    assert ahead[0] < first_end, "batch 2 started decoding only after batch 1 was predicted"
    # every batch after the first was decoded ahead; predicts ran on this thread
    assert len(ahead) == COUNT - BATCH
    assert {thread for what, _, thread in events if what.startswith("predict")} == {
        threading.main_thread().name}
    # one task, three batches, each instance claimed and scored once
    assert sorted(run.claimed) == ids and sorted(run.scored) == ids and run.failed == ()
    assert [len(r.claimed) for r in recorded] == [BATCH] * (COUNT // BATCH)
    assert set(_statuses(sessions).values()) == {InstanceStatus.SCORED.value}


@pytest.mark.parametrize("decode_ahead", [True, False], ids=["decode-ahead", "serial"])
def test_results_and_claims_are_those_of_the_serial_path(
    sessions: sessionmaker[Session], add_instance: AddInstance, decode_ahead: bool
) -> None:
    predictor = RecordingPredictor()
    ids = _add(add_instance, sessions, predictor)

    run = score_instances(sessions, ids[0], "task", lambda: predictor,
                          _options(decode_ahead))

    expected = {i: (round(0.1 + 0.1 * n, 6), BATCH) for n, i in enumerate(ids)}
    assert _scores(sessions) == expected  # same probabilities, batches of 2 either way
    assert sorted(run.claimed) == ids and len(run.claimed) == COUNT  # no instance twice
    decodes = [name for what, name, _ in predictor.events if what == "decode"]
    assert len(decodes) == COUNT == len(set(decodes))  # each image decoded once


def test_an_undecodable_image_in_a_batch_decoded_ahead_is_failed_not_lost(
    sessions: sessionmaker[Session], add_instance: AddInstance
) -> None:
    predictor = RecordingPredictor()
    ids = _add(add_instance, sessions, predictor)
    with sessions() as session:  # the last instance (batch 3, decoded ahead) can't be read
        broken = session.get(Instance, ids[-1]).file_path  # type: ignore[union-attr]
    del predictor.probabilities[broken]

    run = score_instances(sessions, ids[0], "task", lambda: predictor, _options())

    assert run.failed == (ids[-1],) and sorted(run.scored) == ids[:-1]
    with sessions() as session:
        failed = session.get(Instance, ids[-1])
        assert failed is not None and failed.status == InstanceStatus.FAILED.value
        assert (failed.status_reason or "").startswith("cannot decode: ValueError")
    assert set(_scores(sessions)) == set(ids[:-1])


def test_a_failed_prediction_releases_the_batch_decoded_ahead_too(
    sessions: sessionmaker[Session], add_instance: AddInstance
) -> None:
    predictor = RecordingPredictor()
    predictor.fail_predict = True
    ids = _add(add_instance, sessions, predictor, count=4)

    with pytest.raises(RuntimeError, match="inference failed"):
        score_instances(sessions, ids[0], "task", lambda: predictor, _options())

    # batch 1 and the batch claimed ahead are back to received for the sweeper: none lost
    assert set(_statuses(sessions).values()) == {InstanceStatus.RECEIVED.value}
    assert any(thread.startswith("decode-ahead") for what, _, thread in predictor.events
               if what == "decode")
    assert _scores(sessions) == {}


# --- the decoding process: real codecs, real ensemble -----------------------------------------


@pytest.fixture(scope="module")
def ensemble(tiny_ensemble: Path) -> Ensemble:
    return load_cpu(tiny_ensemble)


def test_the_decoding_process_gives_the_tensors_of_ensemble_preprocess(
    ensemble: Ensemble, shared_dicom: Path, tmp_path: Path
) -> None:
    files = [write_in(JPEG2000Lossless, tmp_path / "j2k.dcm"),
             write_in(JPEGLSLossless, tmp_path / "jls.dcm"),
             shared_dicom / "pylibjpeg-data_RG1_J2KI.dcm",  # a real CR chest, JPEG 2000
             tmp_path / "broken.dcm"]
    files[-1].write_bytes(files[0].read_bytes()[:2000])  # truncated: a reason, not an error
    refs = [ImageRef(n, str(path), "0" * 64) for n, path in enumerate(files)]

    elsewhere = decode_ahead(refs, ensemble)
    here = decode_batch(refs, ensemble.preprocess)

    pid = decoder_pid()
    assert pid is not None and pid != os.getpid()  # decoded in the decoding process
    assert elsewhere.tensors is not None and here.tensors is not None
    assert torch.equal(elsewhere.tensors, here.tensors)
    assert [r.instance_id for r in elsewhere.refs] == [0, 1, 2]
    assert [(r.instance_id, why.split(":")[0]) for r, why in elsewhere.failures] == [
        (3, "cannot decode")]


@pytest.mark.parametrize("decode_ahead_on", [True, False], ids=["decode-ahead", "serial"])
def test_live_scoring_with_the_decoding_process_matches_the_ensemble(
    sessions: sessionmaker[Session], add_instance: AddInstance, ensemble: Ensemble,
    decode_ahead_on: bool,
) -> None:
    study = generate_uid()
    ids = [add_instance(study, seed=i) for i in range(4)]

    run = score_instances(sessions, ids[0], "task", lambda: ensemble, _options(decode_ahead_on))

    assert sorted(run.scored) == ids
    with sessions() as session:
        paths = [session.get(Instance, i).file_path for i in ids]  # type: ignore[union-attr]
    expected = {}
    for batch in (ids[:BATCH], ids[BATCH:]):  # the batches the task claimed, oldest first
        tensors = torch.stack([ensemble.preprocess(Path(paths[ids.index(i)])) for i in batch])
        for i, mean in zip(batch, ensemble.predict(tensors).mean, strict=True):
            expected[i] = pytest.approx(mean, abs=1e-6)
    assert {i: mean for i, (mean, _) in _scores(sessions).items()} == expected
