"""Header copies of the source CT datasets that highdicom can build derived objects from.

highdicom's SR, SEG and SC constructors read the Patient and General Study
attributes of the first source dataset directly (``evidence[0].PatientName``)
and validate some of them (Patient's Sex must be M, F or O; dates must parse).
Real scanner headers may lack these Type 2 attributes (PS3.3 C.7.1.1, C.7.2.1)
or hold values highdicom rejects; a report must still be produced.  So each
builder works on light header copies in which every such attribute is present:
copied when usable, empty otherwise (Type 2 means "present, may be empty").
The copies carry no Pixel Data, which also keeps highdicom's deep copies cheap.
"""

from __future__ import annotations

import copy as copy_module
import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from pipeline.model.identity import AlgorithmIdentity

logger = logging.getLogger(__name__)

# Type 2 attributes of the Patient (C.7.1.1) and General Study (C.7.2.1) modules
# that highdicom reads from the source.
PATIENT_STUDY_TYPE2: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def header_copy(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` without pixel data, with usable Type 2 patient/study attributes.

    Parameters
    ----------
    ds
        A source CT dataset (pixel data optional).

    Returns
    -------
    pydicom.dataset.Dataset
        The copy; ``ds`` itself is not modified.
    """
    copy = Dataset()
    for element in ds:
        if element.keyword not in _PIXEL_KEYWORDS:
            # A copy of each element: setting a value below must not change ``ds``
            # (pydicom assigns to the existing DataElement object in place).
            copy.add(copy_module.copy(element))
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in copy or copy[keyword].value is None:
            setattr(copy, keyword, "")
    # Values highdicom would refuse; an unusable Type 2 value is written empty.
    if str(copy.PatientSex) not in ("M", "F", "O", ""):
        copy.PatientSex = ""
    for keyword, parse in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        try:
            parse(str(copy[keyword].value))
        except ValueError:
            logger.warning("series %s: unreadable %s written empty", ds.get("SeriesInstanceUID", "?"), keyword)
            setattr(copy, keyword, "")
    return copy


def header_copies(datasets: Sequence[Dataset]) -> list[Dataset]:
    """:func:`header_copy` of the first dataset, identity-only copies of the rest.

    highdicom reads patient and study attributes from the first dataset only;
    the others need just their UIDs and geometry, so they are copied without
    pixel data but otherwise unchanged.
    """
    if not datasets:
        return []
    first = header_copy(datasets[0])
    rest = []
    for ds in datasets[1:]:
        copy = Dataset()
        for element in ds:
            if element.keyword not in _PIXEL_KEYWORDS:
                copy.add(element)
        rest.append(copy)
    return [first, *rest]


def device_attributes(identity: AlgorithmIdentity) -> dict[str, str]:
    """highdicom keyword arguments naming the model as the device that made an object.

    The model UID is the Device Serial Number: it identifies this "device" (a
    trained model) uniquely and changes with every retraining.
    """
    return {
        "manufacturer": identity.manufacturer,
        "manufacturer_model_name": identity.name,
        "software_versions": identity.software_version,
        "device_serial_number": identity.uid,
    }
