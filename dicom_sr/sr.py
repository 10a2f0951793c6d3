"""The Comprehensive 3D SR of a scored series: TID 1500 "Imaging Measurement Report".

Built with highdicom (``report.md`` section 1).  Content tree::

    CONTAINER (126000, DCM, "Imaging Measurement Report")            TID 1500
      language, device observer (TID 1001/1004), procedure reported
      CONTAINER (126010, DCM, "Imaging Measurements")
        CONTAINER (125007, DCM, "Measurement Group")  x counted lesion       TID 1410
          tracking identifier ("LAD lesion 2") + UID, finding, finding site,
          algorithm identification (TID 4019)
          NUM Agatston / volume (of the lesion) / area (of the outline)
          SCOORD POLYLINE image region: the lesion's outline on its peak slice,
              SELECTED FROM that CT image
        CONTAINER (125007, DCM, "Measurement Group")  x total + 4 arteries   TID 1501
          tracking identifier + UID, [finding], finding site (CID 3016)
          NUM Agatston / volume / [mass] / lesion count, each with
              method, algorithm identification (TID 4019) and
              [source of measurement: segments of the lesion SEG]      TID 320
      CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        CODE risk category, CAC-DRS (private scheme 99CACNODE)
        TEXT caution, profile, acquisition, deviations

When a lesion SEG is written, each measurement names the SEG segments it
was measured on (see :func:`segment_source` for why not TID 1411).  The
lesion groups give viewers that draw measurements from coordinates (OHIF,
dcmjs) something to draw: each lesion outlined on the CT with its artery and
score (see :func:`lesion_group`).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.valuerep import DSfloat

from dicom_sr import codes
from dicom_sr.config import ReportConfig
from dicom_sr.outline import outline
from dicom_sr.source import device_attributes, header_copies
from pipeline.scoring.arteries import ARTERY_NAMES
from pipeline.scoring.flags import FLAG_TEXT, is_estimate
from pipeline.model.identity import AlgorithmIdentity
from pipeline.scoring.result import SeriesResult
from pipeline.scoring.agatston import ArteryScore, ScoringProfile
from pipeline.scoring.lesions import Lesion

TOTAL = "Total"
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def profile_parameters(profile: ScoringProfile) -> list[str]:
    """The scoring profile as ``key=value`` strings (see :func:`algorithm_parameters`)."""
    params = [
        f"profile={profile.name}",
        f"threshold_hu={profile.threshold_hu:g}",
        "weight_cutoffs_hu=" + ",".join(f"{c:g}" for c in profile.weight_cutoffs_hu),
        f"min_area={profile.min_area:g} {profile.min_area_unit}",
        f"connectivity={profile.connectivity}",
        f"normalise_increment={'on' if profile.normalise_increment else 'off'}"
        + (f" (reference {profile.reference_increment_mm:g} mm)" if profile.normalise_increment else ""),
    ]
    if profile.mass_calibration_mg_per_mm3_hu is not None:
        params.append(f"mass_calibration_mg_per_mm3_hu={profile.mass_calibration_mg_per_mm3_hu:g}")
    return params


def algorithm_parameters(profile: ScoringProfile) -> list[str]:
    """The TID 4019 Algorithm Parameters: the whole profile as one ``; ``-separated text item.

    TID 4019 is repeated on every measurement; one item instead of six keeps
    a rendered report (``dsr2html``, viewers) readable, and the ``key=value``
    pairs stay easy to parse.
    """
    return ["; ".join(profile_parameters(profile))]


def caveat_texts(result: SeriesResult, config: ReportConfig) -> list[str]:
    """The sentences a reader must see next to the numbers: caution, profile, acquisition, deviations."""
    p = result.profile
    kvp = "unknown" if result.kvp is None else f"{result.kvp:g} kVp"
    thickness = "unknown" if result.slice_thickness_mm is None else f"{result.slice_thickness_mm:g} mm"
    texts = [
        config.caution,
        f"Scoring profile {p.name}: threshold {p.threshold_hu:g} HU, minimum area {p.min_area:g} "
        f"{p.min_area_unit}, {p.connectivity}-connectivity, increment normalisation "
        f"{'on' if p.normalise_increment else 'off'}.",
        f"Acquisition: tube voltage {kvp}, slice thickness {thickness}, increment {result.increment_mm:.3g} mm, "
        f"{result.n_slices} slices.",
    ]
    texts += [FLAG_TEXT.get(flag, flag) for flag in result.flags]
    if is_estimate(result.flags):
        texts.append("Because of the deviations above, these scores are estimates.")
    return texts


def _measurements(
    score: ArteryScore,
    algorithm: hd.sr.AlgorithmIdentification,
    with_mass: bool,
    source: hd.sr.SourceImageForMeasurement | None,
) -> list[hd.sr.Measurement]:
    images = None if source is None else [source]
    items = [
        hd.sr.Measurement(
            name=codes.AGATSTON,
            value=score.agatston,
            unit=codes.UNIT_NONE,
            method=codes.AGATSTON_METHOD,
            algorithm_id=algorithm,
            referenced_images=images,
        ),
        hd.sr.Measurement(
            name=codes.VOLUME,
            value=score.volume_mm3,
            unit=codes.UNIT_MM3,
            method=codes.VOLUME_METHOD,
            algorithm_id=algorithm,
            referenced_images=images,
        ),
    ]
    if with_mass:
        if score.mass_mg is None:
            raise ValueError("a calibrated profile must give a mass for every artery")
        items.append(
            hd.sr.Measurement(
                name=codes.MASS,
                value=score.mass_mg,
                unit=codes.UNIT_MG,
                method=codes.MASS_METHOD,
                algorithm_id=algorithm,
                referenced_images=images,
            )
        )
    items.append(
        hd.sr.Measurement(
            name=codes.LESION_COUNT,
            value=score.lesions,
            unit=codes.UNIT_LESIONS,
            algorithm_id=algorithm,
            referenced_images=images,
        )
    )
    for measurement in items:
        _readable_numeric_value(measurement[0])
    return items


def _readable_numeric_value(num: Dataset) -> None:
    """Show Numeric Value (DS) as a reader expects it, e.g. ``741.3`` not ``741.340087891``.

    Viewers and ``dsr2html`` show Numeric Value, rounded here to one decimal as
    calcium scores are reported.  The exact binary value is kept in Floating
    Point Value (0040,A161, PS3.3 C.18.1), which :mod:`dicom_sr.reader` reads.
    """
    item = num.MeasuredValueSequence[0]
    exact = float(item.get("FloatingPointValue", item.NumericValue))
    text = str(int(exact)) if exact.is_integer() else f"{exact:.1f}"
    if float(text) != exact:
        item.FloatingPointValue = exact
    item.NumericValue = DSfloat(text)


def segment_source(seg: Dataset, segment_numbers: Sequence[int]) -> hd.sr.SourceImageForMeasurement:
    """A TID 320 "Source of Measurement" IMAGE item pointing at segments of the lesion SEG.

    The Image Reference Macro (PS3.3 Table C.18.4-1, 10-3) carries Referenced
    Segment Number (0062,000B, VM 1-n) when the referenced instance is a
    Segmentation, so a plain TID 1501 group can tie its numbers to the
    segments that were measured: one segment for an artery, all of them for
    the total.  TID 1411 (one Referenced Segment per group) would fit an
    artery but not the total nor an artery without calcium, and a TID 1500
    container mixing TID 1411 and TID 1501 groups is rejected by the pixelmed
    validator, which picks one template for the whole container.
    """
    source = hd.sr.SourceImageForMeasurement(seg.SOPClassUID, seg.SOPInstanceUID)
    source.ReferencedSOPSequence[0].ReferencedSegmentNumber = list(segment_numbers)
    return source


def _group(
    name: str,
    score: ArteryScore,
    site: hd.sr.CodedConcept,
    algorithm: hd.sr.AlgorithmIdentification,
    with_mass: bool,
    source: hd.sr.SourceImageForMeasurement | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 measurement group: tracking, finding site, measurements."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{name} coronary calcium"),
        # A group without calcium reports zeros, not a calcified plaque.
        finding_type=codes.SEG_TYPE if score.lesions > 0 else None,
        finding_sites=[hd.sr.FindingSite(site)],
        measurements=_measurements(score, algorithm, with_mass, source),
    )


def lesion_group(
    lesion: Lesion, image: Dataset, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1410 group locating a counted lesion: its outline on its peak slice, its artery and scores.

    The outline is a closed SCOORD POLYLINE in the pixel coordinates of
    ``image`` (the CT slice of the lesion's largest 2-D component) and
    references that image, the shape OHIF and dcmjs draw from.  The Agatston
    score comes first: OHIF labels the drawing with the group's first number.
    The algorithm identification (TID 4019) is given once, for the group.
    """
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline(lesion.mask, lesion.row, lesion.col),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    measurements = [
        hd.sr.Measurement(
            name=codes.AGATSTON, value=lesion.agatston, unit=codes.UNIT_NONE, method=codes.AGATSTON_METHOD
        ),
        hd.sr.Measurement(name=codes.VOLUME, value=lesion.volume_mm3, unit=codes.UNIT_MM3, method=codes.VOLUME_METHOD),
        # The area inside the outline (the peak component), as TID 1410 measures its region.
        hd.sr.Measurement(name=codes.AREA, value=lesion.area_mm2, unit=codes.UNIT_MM2),
    ]  # fmt: skip
    for measurement in measurements:
        _readable_numeric_value(measurement[0])
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{lesion.artery} lesion {lesion.number}"),
        referenced_region=region,
        finding_type=codes.SEG_TYPE,
        # TID 1410 takes one algorithm identification (TID 4019) for the whole group,
        # which keeps a heavily calcified series' SR small.
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.ARTERY_CODES[lesion.artery])],
        measurements=measurements,
    )


def labels_text(identity: AlgorithmIdentity) -> str | None:
    """The sentence saying the labels are a reference annotation, and where they came from; None for a model."""
    if not identity.is_reference:
        return None
    return (f"Scored from a reference annotation ({identity.labels_origin}), "
            "not from the output of an artificial-intelligence model.")


def algorithm_identification(identity: AlgorithmIdentity, profile: ScoringProfile) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of every measurement: the model, or for a reference annotation the scoring software.

    The Algorithm Family (CID 7162) is (123110, DCM, "Artificial Intelligence")
    only when a model made the labels; scores of a reference annotation are
    (123109, DCM, "Manual Processing") followed by the scoring profile.
    """
    return hd.sr.AlgorithmIdentification(
        name=identity.name,
        version=identity.version,
        parameters=algorithm_parameters(profile),
        family=codes.MANUAL_FAMILY if identity.is_reference else codes.AI_FAMILY,
    )


def qualitative_evaluations(
    result: SeriesResult, config: ReportConfig, identity: AlgorithmIdentity | None = None
) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: risk category and CAC-DRS as codes, then the caveats as text.

    The categories judge the study as a whole, so they sit here rather than in
    the total's measurement group (where the pixelmed validator also warns
    that TID 1501 has no row for them).  For a reference annotation a comment
    names where the labels came from (see :func:`labels_text`).
    """
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS, relationship_type=contains)
    score = result.score
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(codes.RISK_CATEGORY, codes.risk_value(score.risk_category), relationship_type=contains),
        hd.sr.CodeContentItem(codes.CAC_DRS, codes.cac_drs_value(score.cac_drs), relationship_type=contains),
    ]
    items += [
        hd.sr.TextContentItem(name=codes.COMMENT, value=text, relationship_type=contains)
        for text in caveat_texts(result, config)
    ]
    origin = None if identity is None else labels_text(identity)
    if origin is not None:
        items.append(hd.sr.TextContentItem(name=codes.COMMENT, value=origin, relationship_type=contains))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_sr(
    result: SeriesResult,
    source_datasets: Sequence[Dataset],
    identity: AlgorithmIdentity,
    config: ReportConfig,
    seg: Dataset | None = None,
    lesions: Sequence[Lesion] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of ``result``.

    Parameters
    ----------
    result
        The scored series.
    source_datasets
        Every CT dataset of the scored series (the evidence); pixel data not needed.
    identity
        The algorithm: device observer, TID 4019 and Content Contributing Equipment;
        for a reference annotation no AI family and a comment naming its origin.
    config
        Series number, description and caution text.
    seg
        The lesion SEG from :func:`dicom_sr.seg.build_lesion_seg`, or ``None``;
        when given, each measurement references the segments it was measured on.
    lesions
        The counted lesions of ``result`` (:func:`pipeline.scoring.lesions.find_lesions`),
        each written as a TID 1410 group before the total and artery groups;
        ``slice_index`` indexes ``source_datasets``.
    """
    score = result.score
    with_mass = result.profile.mass_calibration_mg_per_mm3_hu is not None
    algorithm = algorithm_identification(identity, result.profile)
    segments = {} if seg is None else {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    # The lesions come first: OHIF's SR viewport opens on the first measurement
    # and stays empty when that one has no coordinates to draw.  Then the
    # total, the figure a reader looks for, and the arteries.
    groups = [lesion_group(lesion, source_datasets[lesion.slice_index], algorithm) for lesion in lesions]
    site = hd.sr.CodedConcept.from_code(codes.CORONARY_ARTERY)
    total_source = segment_source(seg, sorted(segments.values())) if segments else None
    groups.append(_group(TOTAL, score.total, site, algorithm, with_mass, total_source))
    for name in ARTERY_NAMES:
        source = segment_source(seg, [segments[name]]) if name in segments else None
        site = hd.sr.CodedConcept.from_code(codes.ARTERY_CODES[name])
        groups.append(_group(name, score.arteries[name], site, algorithm, with_mass, source))

    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.uid,
            name=identity.name,
            manufacturer_name=identity.manufacturer,
            model_name=f"{identity.name} {identity.version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(qualitative_evaluations(result, config, identity))

    evidence = header_copies(source_datasets)
    if seg is not None:
        evidence.append(seg)
    equipment = hd.ContributingEquipment(
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        **device_attributes(identity),
        contribution_description=f"Calcium scoring by {identity.name} {identity.version}, algorithm UID {identity.uid}",
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=config.sr_series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **device_attributes(identity),
        series_description=config.sr_series_description,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[equipment],
        coding_schemes=[codes.coding_scheme_identification()],
    )
    _separate_containers(sr)
    return sr


def _separate_containers(item: Dataset) -> None:
    """Mark every container SEPARATE (PS3.3 C.18.8: Continuity of Content).

    highdicom writes CONTINUOUS, which tells renderers the children form one
    running text; ``dsr2html`` then prints bare values ("23.52 1 / 23.52 mm3")
    without their concept names.  Our items are separate measurements.
    """
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate_containers(child)
