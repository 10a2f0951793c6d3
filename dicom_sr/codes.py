"""Every coded concept the report objects use, in one place (``report.md``).

Standard codes come from DCM (PS3.16 Annex D), SNOMED CT (SCT) and UCUM.
Lesion count, risk category and CAC-DRS have no standard codes, so they use
a private coding scheme of ours, ``99CACNODE``, declared in the Coding Scheme
Identification Sequence of the SR (PS3.3 C.12.1.1.3).  The retired
(112058, DCM, "Calcium score") is deliberately not used.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from pipeline.scoring.arteries import ARTERIES, CORONARY_ARTERY_CODE, Artery

# --- the private coding scheme (PS3.3 C.12.1.1.3, PS3.16 8.2 "99" prefix) ---
PRIVATE_SCHEME = "99CACNODE"
PRIVATE_SCHEME_NAME = "cacnode calcium scoring concepts"
PRIVATE_SCHEME_RESPONSIBLE = "cacnode project"


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The item declaring :data:`PRIVATE_SCHEME` in the SR header."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        responsible_organization=PRIVATE_SCHEME_RESPONSIBLE,
    )


LESION_COUNT = Code("LESIONS", PRIVATE_SCHEME, "Number of calcified lesions")
RISK_CATEGORY = Code("RISKCAT", PRIVATE_SCHEME, "Agatston risk category")
CAC_DRS = Code("CACDRS", PRIVATE_SCHEME, "CAC-DRS category")

# --- measurements (report.md section 1) ---
AGATSTON = Code("450360000", "SCT", "Coronary artery calcium score")
AGATSTON_METHOD = Code("112055", "DCM", "Agatston scoring method")
VOLUME = Code("122660", "DCM", "Calcium Volume")
VOLUME_METHOD = Code("112056", "DCM", "Volume scoring method")
MASS = Code("122661", "DCM", "Calcium Mass")
MASS_METHOD = Code("112057", "DCM", "Mass scoring method")

AREA = Code("42798000", "SCT", "Area")

UNIT_NONE = Code("1", "UCUM", "no units")
UNIT_MM2 = Code("mm2", "UCUM", "square millimeter")
UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UNIT_MG = Code("mg", "UCUM", "milligram")
UNIT_LESIONS = Code("{lesions}", "UCUM", "lesions")

# --- algorithm identification (TID 4019) ---
AI_FAMILY = Code("123110", "DCM", "Artificial Intelligence")
# Labels from a reference annotation: the same CID 7162 names manual work (report.md:
# a report made from reference labels is not coded as artificial-intelligence output).
MANUAL_FAMILY = Code("123109", "DCM", "Manual Processing")
# The finder of calcium no artery counts (threshold, connected components, size rules): CID 7162.
NEIGHBORHOOD_FAMILY = Code("123101", "DCM", "Neighborhood Analysis")

# --- SEG segment description (report.md section 2) ---
SEG_CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")
SEG_TYPE = Code("29483008", "SCT", "Calcified atheromatous plaque")
# The segment of calcium in the heart crop that no artery counts (``pipeline.scoring.uncounted``):
# same category, typed as calcification without saying where (not a coronary plaque by our labels).
UNCOUNTED_SEG_TYPE = Code("18115005", "SCT", "Pathologic calcification")

# --- procedure reported (TID 1500 row 4, CID 100) ---
# CID 100 has no cardiac or calcium-scoring CT concept; its CT member is used so
# that validators accept the report (the SR title and groups say what was measured).
PROCEDURE_REPORTED = Code("25045-6", "LN", "CT unspecified body region")

# --- text items holding acquisition caveats (TID 1500 row 10 "Finding" style) ---
COMMENT = Code("121106", "DCM", "Comment")

# Purpose of reference of the Contributing Equipment (PS3.16 CID 7005).
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")


def artery_code(artery: Artery) -> Code:
    """The CID 3016 finding-site code of an artery."""
    return Code(artery.sct_code, "SCT", artery.meaning)


CORONARY_ARTERY = Code(*CORONARY_ARTERY_CODE)
HEART = Code("80891009", "SCT", "Heart structure")  # site of the calcium no artery counts
ARTERY_CODES: dict[str, Code] = {a.name: artery_code(a) for a in ARTERIES}


# Values of RISK_CATEGORY and CAC_DRS, coded in the private scheme.  Code values
# are the category strings of calcium-scoring.md (SH, at most 16 characters).
_RISK_MEANINGS = {
    "0": "No coronary calcium (total Agatston 0)",
    "1-10": "Minimal calcium (total Agatston 1-10)",
    "11-100": "Mild calcium (total Agatston 11-100)",
    "101-400": "Moderate calcium (total Agatston 101-400)",
    ">400": "Severe calcium (total Agatston above 400)",
}
_CAC_DRS_GRADES = {"A0": "no calcium", "A1": "mild", "A2": "moderate", "A3": "severe"}


def risk_value(category: str) -> Code:
    """The coded value of a risk category (``0``, ``1-10``, ``11-100``, ``101-400``, ``>400``)."""
    return Code(category, PRIVATE_SCHEME, _RISK_MEANINGS[category])


def cac_drs_value(category: str) -> Code:
    """The coded value of a CAC-DRS category such as ``A2/N3``."""
    grade, _, vessels = category.partition("/")
    meaning = f"CAC-DRS {category}: {_CAC_DRS_GRADES[grade]}"
    if vessels:
        n = int(vessels[1:])
        meaning += f", {n} {'vessel' if n == 1 else 'vessels'}"
    return Code(category, PRIVATE_SCHEME, meaning)
