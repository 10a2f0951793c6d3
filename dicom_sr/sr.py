"""The Comprehensive 3D SR of a scored series: TID 1500 "Imaging Measurement Report".

Built with highdicom (``report.md`` section 1).  Content tree::

    CONTAINER (126000, DCM, "Imaging Measurement Report")            TID 1500
      language, device observer (TID 1001/1004), procedure reported
      CONTAINER (126010, DCM, "Imaging Measurements")   [only with lesions]
        CONTAINER (125007, DCM, "Measurement Group")  x counted lesion       TID 1410
          tracking identifier ("LAD lesion 2") + UID, finding, finding site,
          algorithm identification (TID 4019)
          NUM Agatston / volume (of the lesion) / area (of the outline)
          SCOORD POLYLINE image region: the lesion's outline on its peak slice,
              SELECTED FROM that CT image
      CONTAINER (126011, DCM, "Derived Imaging Measurements")               TID 1420
        NUM Agatston / volume / [mass] / lesion count  x total + 4 arteries,
          each with method, finding site (CID 3016), algorithm identification
          (TID 4019), [source of measurement: segments of the lesion SEG]
        [NUM volume of the calcium in the heart region no artery counts, site heart]
      CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        CODE risk category, CAC-DRS (private scheme 99CACNODE)
        TEXT caution, profile, acquisition, deviations, [uncounted calcium, review]

The per-artery and total scores are sums over the lesions, so they are
derived measurements (TID 1420) rather than measurement groups of their own:
a viewer that draws every group of Imaging Measurements (OHIF) needs
coordinates in each, and an artery's total has none.  The lesion groups
give those viewers something to draw: each lesion outlined on the CT with
its artery and score (see :func:`lesion_group`).  When a lesion SEG is
written, each score names the SEG segments it was measured on (see
:func:`segment_source`).
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
from pipeline.scoring.uncounted import DESCRIPTION

TOTAL = "Total"
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_DERIVED_MEASUREMENTS = hd.sr.CodedConcept("126011", "DCM", "Derived Imaging Measurements")


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
    site: hd.sr.CodedConcept,
    algorithm: hd.sr.AlgorithmIdentification,
    with_mass: bool,
    source: hd.sr.SourceImageForMeasurement | None,
) -> list[hd.sr.Measurement]:
    """The TID 1420 numbers of one artery or the total: Agatston, volume, [mass], lesion count."""
    images = None if source is None else [source]
    sites = [hd.sr.FindingSite(site)]
    items = [
        hd.sr.Measurement(
            name=codes.AGATSTON,
            value=score.agatston,
            unit=codes.UNIT_NONE,
            method=codes.AGATSTON_METHOD,
            finding_sites=sites,
            algorithm_id=algorithm,
            referenced_images=images,
        ),
        hd.sr.Measurement(
            name=codes.VOLUME,
            value=score.volume_mm3,
            unit=codes.UNIT_MM3,
            method=codes.VOLUME_METHOD,
            finding_sites=sites,
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
                finding_sites=sites,
                algorithm_id=algorithm,
                referenced_images=images,
            )
        )
    items.append(
        hd.sr.Measurement(
            name=codes.LESION_COUNT,
            value=score.lesions,
            unit=codes.UNIT_LESIONS,
            finding_sites=sites,
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
    Segmentation, so a score can name the segments it was measured on: one
    segment for an artery, all of them for the total.
    """
    source = hd.sr.SourceImageForMeasurement(seg.SOPClassUID, seg.SOPInstanceUID)
    source.ReferencedSOPSequence[0].ReferencedSegmentNumber = list(segment_numbers)
    return source


def derived_measurements(
    scores: Sequence[tuple[ArteryScore, hd.sr.CodedConcept, hd.sr.SourceImageForMeasurement | None]],
    algorithm: hd.sr.AlgorithmIdentification,
    with_mass: bool,
    extra: Sequence[Dataset] = (),
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 10: the total's and each artery's numbers (TID 1420), given per figure set
    its score, finding site and SEG source, then ``extra`` numbers.

    They name no lesion group by reference (INFERRED FROM by reference): highdicom
    0.28 refuses to read an SR holding such an item, and a reader built on it
    must be able to read ours.  The finding site ties each number to its artery.
    """
    container = hd.sr.ContainerContentItem(
        name=_DERIVED_MEASUREMENTS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        measurement[0] for score, site, source in scores
        for measurement in _measurements(score, site, algorithm, with_mass, source)] + list(extra))
    return container


def uncounted_texts(result: SeriesResult) -> list[str]:
    """What the report says of the heart region's calcium that no artery counts (none when not assessed)."""
    u = result.uncounted
    if u is None:
        return []
    texts = [f"{DESCRIPTION} (not in the score): {u.volume_mm3:.1f} mm3 in {u.components} object(s) "
             "in the heart region."]
    if u.review_text is not None:
        texts.append(f"Review: {u.review_text}")
    return texts


def uncounted_volume(result: SeriesResult, algorithm: hd.sr.AlgorithmIdentification,
                     source: hd.sr.SourceImageForMeasurement | None) -> list[Dataset]:
    """The uncounted calcium's volume as a derived number at the heart (none when not assessed),
    naming its SEG segment (``source``) when there is one.

    Its finding site is the heart, not a coronary artery, so readers of the
    artery and total scores (ours included) pass it by.
    """
    if result.uncounted is None:
        return []
    measurement = hd.sr.Measurement(
        name=codes.VOLUME, value=result.uncounted.volume_mm3, unit=codes.UNIT_MM3, method=codes.VOLUME_METHOD,
        finding_sites=[hd.sr.FindingSite(codes.HEART)], algorithm_id=algorithm,
        referenced_images=None if source is None else [source])
    _readable_numeric_value(measurement[0])
    return [measurement[0]]


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

    The categories judge the study as a whole, so they sit here rather than
    beside the total's numbers (TID 1420 has no row for them).  For a
    reference annotation a comment
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
    items += [hd.sr.TextContentItem(name=codes.COMMENT, value=text, relationship_type=contains)
              for text in uncounted_texts(result)]
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
        each written as a TID 1410 group that the total and its artery refer to;
        ``slice_index`` indexes ``source_datasets``.
    """
    score = result.score
    with_mass = result.profile.mass_calibration_mg_per_mm3_hu is not None
    algorithm = algorithm_identification(identity, result.profile)
    # The SEG's segments by label: the arteries', and the one of the calcium no artery counts.
    segments = {} if seg is None else {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    artery_segments = sorted(number for label, number in segments.items() if label in ARTERY_NAMES)
    groups = [lesion_group(lesion, source_datasets[lesion.slice_index], algorithm) for lesion in lesions]
    # The total first, the figure a reader looks for, then the arteries.
    scores = [(score.total, hd.sr.CodedConcept.from_code(codes.CORONARY_ARTERY),
               segment_source(seg, artery_segments) if artery_segments else None)]
    for name in ARTERY_NAMES:
        scores.append((score.arteries[name], hd.sr.CodedConcept.from_code(codes.ARTERY_CODES[name]),
                       segment_source(seg, [segments[name]]) if name in segments else None))

    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.uid,
            name=identity.name,
            manufacturer_name=identity.manufacturer,
            model_name=f"{identity.name} {identity.version}",
        ),
    )
    # highdicom wants one measurement group at least; without lesions the
    # Imaging Measurements container is dropped (TID 1500 needs it only when
    # neither derived measurements nor qualitative evaluations are present).
    placeholder = [lesion_group_placeholder(algorithm)] if not groups else []
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups or placeholder,
    )
    content = report[0].ContentSequence
    if not groups:
        del content[next(i for i, item in enumerate(content) if _concept(item) == _IMAGING_MEASUREMENTS)]
    grey = segment_source(seg, [segments[DESCRIPTION]]) if DESCRIPTION in segments else None
    content.append(derived_measurements(scores, algorithm, with_mass, uncounted_volume(result, algorithm, grey)))
    content.append(qualitative_evaluations(result, config, identity))

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


def lesion_group_placeholder(algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group that only lets highdicom build a report without lesions (removed at once by ``build_sr``)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="none"), algorithm_id=algorithm)


def _concept(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return str(name.CodeValue), str(name.CodingSchemeDesignator)


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
