"""``cxr-triage labels import CSV``: ground truth for studies the node has received.

The CSV has a header row with ``study`` (a Study Instance UID or an accession number),
``label`` (positive/negative, covid/normal, 1/0, yes/no), ``source`` (who or what said so, e.g.
``radiologist review``) and ``date`` (YYYY-MM-DD). Every row is checked before anything is
written; one bad row and nothing is imported, and the error names each bad line.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.registry import NewLabel, find_study, replace_labels
from worker.validation.criteria import ValidationError

COLUMNS = ("study", "label", "source", "date")
POSITIVE = {"positive", "covid", "covid-19", "1", "yes", "true"}
NEGATIVE = {"negative", "normal", "0", "no", "false"}
MAX_ERRORS_SHOWN = 10


def _row(session: Session, line: int, row: dict[str, str | None]) -> NewLabel:
    key = (row.get("study") or "").strip()
    label = (row.get("label") or "").strip().lower()
    source = (row.get("source") or "").strip()
    when = (row.get("date") or "").strip()
    if None in row or any(row.get(c) is None for c in COLUMNS):
        raise ValueError(f"line {line}: expected {len(COLUMNS)} fields ({', '.join(COLUMNS)})")
    if not key:
        raise ValueError(f"line {line}: empty study (a Study Instance UID or accession number)")
    if label not in POSITIVE | NEGATIVE:
        raise ValueError(f"line {line}: label {label!r} is neither positive nor negative")
    if not source or len(source) > 64:
        raise ValueError(f"line {line}: source must be 1 to 64 characters")
    try:
        day = dt.date.fromisoformat(when)
    except ValueError:
        raise ValueError(f"line {line}: date {when!r} is not YYYY-MM-DD") from None
    study_id = find_study(session, key)
    if study_id is None:
        raise ValueError(f"line {line}: no received study has the Study Instance UID or "
                         f"accession number {key!r}")
    return NewLabel(study_id, label in POSITIVE, source, day)


def read_labels(session: Session, path: Path) -> list[NewLabel]:
    """Parse and check every row; raise :class:`ValidationError` naming the bad lines."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = [c.strip().lower() for c in reader.fieldnames or []]
        if header != list(COLUMNS):
            raise ValidationError(f"{path}: line 1 must be the header "
                                  f"{','.join(COLUMNS)} (found {','.join(header) or 'nothing'})")
        reader.fieldnames = header
        labels: list[NewLabel] = []
        errors: list[str] = []
        seen: dict[int, int] = {}
        for row in reader:
            line = reader.line_num
            try:
                label = _row(session, line, row)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            if label.study_id in seen:
                errors.append(f"line {line}: the study of line {seen[label.study_id]} again")
                continue
            seen[label.study_id] = line
            labels.append(label)
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > 10 else ""
        raise ValidationError(f"{path}: nothing imported: {shown}{more}")
    if not labels:
        raise ValidationError(f"{path}: no label rows after the header")
    return labels


def import_labels(sessions: sessionmaker[Session], path: Path, imported_by: str) -> int:
    """Check the whole file, then record every label in one transaction."""
    with sessions.begin() as session:
        return replace_labels(session, read_labels(session, path), imported_by)
