"""Coded concepts of the COVID-19 triage Structured Report, defined once.

Where ``pydicom.sr.codedict.codes`` holds a concept it is re-exported from
there; the few SNOMED CT concepts that the DICOM code dictionary (PS3.16) lacks
are defined here as :class:`highdicom.sr.CodedConcept` constants, each with the
source it was taken from. A fold's probability has no standard concept: it gets a
code of our own local coding scheme (PS3.3 8.2, a designator starting "99"),
declared in the SR's Coding Scheme Identification Sequence. docs/sr.md lists every
concept the report uses.
"""

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from worker.score.decision import Decision, Priority

# --- SNOMED CT concepts absent from the DICOM code dictionary -------------------------
# SNOMED CT International Edition, concept 840539006, FSN "Disease caused by severe
# acute respiratory syndrome coronavirus 2 (disorder)", preferred term "COVID-19"
# (added to the International Edition on 2020-03-09; used as FHIR/EU DCC target disease).
COVID19 = CodedConcept(value="840539006", scheme_designator="SCT", meaning="COVID-19")

# SNOMED CT concept 428263003 "NOT suspected (qualifier value)", the sibling of
# 415684004 "Suspected" under the finding-context (certainty) qualifier values.
NOT_SUSPECTED = CodedConcept(value="428263003", scheme_designator="SCT", meaning="NOT suspected")

# SNOMED CT concepts under 272125009 "Priorities (qualifier value)": 394849002
# "High priority" and 50811001 "Routine" (the codes HL7 FHIR uses for
# request and encounter priority).
HIGH_PRIORITY = CodedConcept(value="394849002", scheme_designator="SCT", meaning="High priority")
ROUTINE_PRIORITY = CodedConcept(value="50811001", scheme_designator="SCT", meaning="Routine")

# --- Concepts taken from pydicom's code dictionary (PS3.16) ---------------------------
SUSPECTED = CodedConcept.from_code(codes.SCT.Suspected)  # SCT 415684004
INDETERMINATE = CodedConcept.from_code(codes.SCT.Indeterminate)  # SCT 82334004
PRIORITY = CodedConcept.from_code(codes.SCT.Priority)  # SCT 260870009 "Priority (attribute)"
PROBABILITY = CodedConcept.from_code(codes.DCM.Probability)  # DCM 122157
MEAN = CodedConcept.from_code(codes.SCT.Mean)  # SCT 373098007, CID 7464 derivation
STANDARD_DEVIATION = CodedConcept.from_code(codes.SCT.StandardDeviation)  # SCT 386136009
# The operating threshold the mean probability is compared with ("Threshold Value").
THRESHOLD = CodedConcept.from_code(codes.DCM.ThresholdValue)  # DCM 122411
UNITLESS = CodedConcept.from_code(codes.UCUM.NoUnits)  # UCUM "1", a probability in [0, 1]
CHEST_IMAGING = CodedConcept.from_code(codes.SCT.ChestImaging)  # SCT 413815006
PLAIN_RADIOGRAPHY = CodedConcept.from_code(codes.SCT.PlainRadiography)  # SCT 168537006
# The COVID-19 finding of a not-assessable study: its presence is undetermined (SCT 373068000
# "Undetermined", CID 230 Yes-No-Undetermined); the report carries no priority and no
# probability, and its tracking identifier says why (docs/sr.md).
NOT_ASSESSABLE = CodedConcept.from_code(codes.SCT.Undetermined)  # SCT 373068000

DECISION_CODES = {
    Decision.SUSPECTED: SUSPECTED,
    Decision.NOT_SUSPECTED: NOT_SUSPECTED,
    Decision.INDETERMINATE: INDETERMINATE,
    Decision.NOT_ASSESSABLE: NOT_ASSESSABLE,
}
PRIORITY_CODES = {
    Priority.HIGH: HIGH_PRIORITY,
    Priority.ROUTINE: ROUTINE_PRIORITY,
}


# --- Our local coding scheme (PS3.3 8.2: private designators start with "99") ---------
LOCAL_SCHEME = "99CXRT"


def local_coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification item of our local scheme (a new one per SR)."""
    return CodingSchemeIdentificationItem(designator=LOCAL_SCHEME, name="cxr-triage local codes",
                                          responsible_organization="cxr-triage project")


def fold_probability(fold_number: int) -> CodedConcept:
    """``Fold n probability``: the COVID-19 probability of fold ``n`` (1-based, in manifest
    fold order: fold 1 is the manifest's fold index 0)."""
    if fold_number < 1:
        raise ValueError(f"fold numbers start at 1, got {fold_number}")
    return CodedConcept(value=f"FOLDP{fold_number}", scheme_designator=LOCAL_SCHEME,
                        meaning=f"Fold {fold_number} probability")
