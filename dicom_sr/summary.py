"""The summary image: a Secondary Capture for viewers that show nothing of an SR (``report.md`` section 3).

One RGB image, from top to bottom: the caution banner, the title, the key
slices with the scored calcium outlined in one colour per artery (and in grey
the calcium of the heart crop that no artery counts, ``pipeline.scoring.uncounted``),
the colour legend, the review flag when that calcium is large, the score table
next to the total / risk category / CAC-DRS, and the acquisition caveats.  Text is large enough to read on a reading-room
monitor at the default 1600 pixel width.  No patient identifiers are drawn
(Burned In Annotation NO), so the image can be shown and exported freely.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

from dicom_sr.config import ReportConfig
from dicom_sr.source import header_copy
from dicom_sr.sr import caveat_texts
from dicom_sr.summary_draw import (
    ARTERY_COLOURS,
    UNCOUNTED_COLOUR,
    calcium_per_slice,
    crop_box,
    font,
    key_slices,
    render_tile,
    text_width,
    wrap,
)
from pipeline.scoring.arteries import ARTERY_NAMES
from pipeline.scoring.flags import is_estimate
from pipeline.model.identity import AlgorithmIdentity
from pipeline.scoring.result import SeriesResult
from pipeline.scoring.agatston import ArteryScore
from pipeline.reading.series import CTSeries

logger = logging.getLogger(__name__)

BACKGROUND = (0, 0, 0)
TEXT = (235, 235, 235)
DIM = (170, 170, 170)
CAUTION_BG = (150, 0, 0)
WARNING = (255, 190, 60)

_RISK_WORDS = {"0": "none", "1-10": "minimal", "11-100": "mild", "101-400": "moderate", ">400": "severe"}


def render_summary(
    result: SeriesResult, labels: np.ndarray, series: CTSeries, identity: AlgorithmIdentity, config: ReportConfig
) -> Image.Image:
    """Draw the summary image of a scored series (RGB, ``config.summary_width_px`` wide)."""
    width = config.summary_width_px
    unit = width / 1600  # every size below is for a 1600 pixel wide image
    margin = int(30 * unit)
    body, small, big = font(int(30 * unit)), font(int(24 * unit)), font(int(42 * unit), bold=True)
    bold = font(int(30 * unit), bold=True)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(30 * unit * 1.35)

    # Key slices: where most scored calcium is; the uncounted calcium's slice too, as a fifth "artery".
    per_slice = calcium_per_slice(series.hu, labels, result.profile.threshold_hu)
    u = result.uncounted if result.uncounted is not None and result.uncounted.components else None
    uncounted = u.mask() if u is not None else None
    shown = per_slice if uncounted is None else np.vstack([per_slice, uncounted.sum(axis=(1, 2))[None]])
    chosen = key_slices(shown, config.key_slices)
    box = crop_box(labels if uncounted is None else (labels > 0) | uncounted, series.geometry.pixel_spacing_mm)
    # Two tiles a row (three for five or six) keep small lesions visible; a lone
    # tile takes half the width.
    n_cols = 2 if config.key_slices <= 4 else 3
    n_rows = -(-len(chosen) // n_cols)
    tile = (width - margin * (n_cols + 1)) // n_cols

    caution_lines = wrap(scratch, config.caution.upper(), bold, width - 2 * margin)
    # Caveats after the caution (which has its banner): profile, acquisition, then
    # the deviations, drawn amber because they make the scores estimates.
    caveats = [
        (line, DIM if i < 2 else WARNING)
        for i, text in enumerate(caveat_texts(result, config)[1:])
        for line in wrap(scratch, text, small, width - 2 * margin)
    ]
    # The review flag, amber under the legend: a zero must not hide calcium a reader should see.
    review = wrap(scratch, u.review_text, bold, width - 2 * margin) if u is not None and u.review_text else []
    footer = wrap(
        scratch,
        f"{identity.name} {identity.version} (algorithm UID {identity.uid}), {result.labels_source}",
        small,
        width - 2 * margin,
    )
    table_rows = len(ARTERY_NAMES) + 2
    height = (
        margin
        + len(caution_lines) * line_h
        + margin  # banner
        + int(60 * unit)  # title
        + line_h  # source line
        + n_rows * (tile + line_h + margin // 2)
        + margin // 2  # tiles and captions
        + line_h
        + margin  # legend
        + len(review) * line_h  # review flag
        + table_rows * line_h
        + margin  # table
        + len(caveats) * int(line_h * 0.85)
        + len(footer) * int(line_h * 0.85)
        + margin  # footer
    )
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    # 1. Caution banner.
    banner_h = len(caution_lines) * line_h + margin
    draw.rectangle((0, 0, width, banner_h), fill=CAUTION_BG)
    y = margin // 2
    for line in caution_lines:
        draw.text(((width - text_width(draw, line, bold)) // 2, y), line, font=bold, fill=(255, 255, 255))
        y += line_h
    y = banner_h + margin // 2

    # 2. Title and source series.
    draw.text((margin, y), "Coronary artery calcium score (Agatston)", font=big, fill=TEXT)
    y += int(60 * unit)
    source = series.datasets[0]
    description = str(source.get("SeriesDescription", "") or "").strip()
    draw.text(
        (margin, y),
        f"Source: series {source.get('SeriesNumber', '?')}"
        + (f" \u201c{description}\u201d" if description else "")
        + f", {result.n_slices} images",
        font=small,
        fill=DIM,
    )
    y += line_h

    # 3. Key slices, head first as in a viewer's stack, with where to find them.
    for i, k in enumerate(sorted(chosen, reverse=True)):
        x = margin + (i % n_cols) * (tile + margin)
        y_tile = y + (i // n_cols) * (tile + line_h + margin // 2)
        outline_grey = None if uncounted is None else uncounted[k]
        image.paste(render_tile(series.hu[k], labels[k], result.profile.threshold_hu, box, tile, outline_grey),
                    (x, y_tile))  # fmt: skip
        number = series.datasets[k].get("InstanceNumber", None)
        z = series.geometry.positions[k][2]
        caption = (f"Image {number}" if number is not None else f"Slice {k + 1}") + f"   z {z:.1f} mm"
        draw.text((x, y_tile + tile + int(6 * unit)), caption, font=small, fill=DIM)
    if not shown.any():
        draw.text((margin * 2 + tile, y + tile // 2), "No coronary calcium found", font=bold, fill=TEXT)
    y += n_rows * (tile + line_h + margin // 2) + margin // 2

    # 4. Legend.
    x = margin
    for name in ARTERY_NAMES:
        swatch = (x, y + int(6 * unit), x + int(26 * unit), y + int(32 * unit))
        draw.rectangle(swatch, outline=ARTERY_COLOURS[name], width=max(2, int(4 * unit)))
        draw.text((x + int(38 * unit), y), name, font=body, fill=ARTERY_COLOURS[name])
        x += int(150 * unit)
    legend = "outlines: calcium counted in the score"
    if u is not None:
        swatch = (x, y + int(6 * unit), x + int(26 * unit), y + int(32 * unit))
        draw.rectangle(swatch, outline=UNCOUNTED_COLOUR, width=max(2, int(4 * unit)))
        draw.text((x + int(38 * unit), y), "Not counted", font=body, fill=UNCOUNTED_COLOUR)
        x += int(220 * unit)
        legend = "outlines: calcium counted in the score; grey: calcium not attributed to an artery"
    for i, line in enumerate(wrap(scratch, legend, small, width - x - int(20 * unit) - margin)[:2]):
        draw.text((x + int(20 * unit), y + int(4 * unit) + i * int(line_h * 0.6)), line, font=small, fill=DIM)
    y += line_h + margin
    for line in review:
        draw.text((margin, y - margin // 2), line, font=bold, fill=WARNING)
        y += line_h

    # 5. Score table (left) and the headline figures (right).
    y_table = y
    table_right = _draw_table(draw, result, margin, y, unit, body, bold, line_h)
    score = result.score
    x_right = max(int(width * 0.58), table_right + int(70 * unit))
    estimate = is_estimate(result.flags)
    draw.text((x_right, y_table), "Total Agatston" + (" (estimate)" if estimate else ""), font=body,
              fill=WARNING if estimate else DIM)  # fmt: skip
    headline = font(int(64 * unit), bold=True)
    draw.text((x_right, y_table + line_h), f"{score.total.agatston:.1f}", font=headline, fill=TEXT)
    y_cat = y_table + line_h + int(80 * unit)
    risk = f"Risk category  {score.risk_category} ({_RISK_WORDS[score.risk_category]})"
    draw.text((x_right, y_cat), risk, font=bold, fill=TEXT)
    draw.text((x_right, y_cat + line_h), f"CAC-DRS  {score.cac_drs}", font=bold, fill=TEXT)
    y += table_rows * line_h + margin

    # 6. Caveats.
    for line, colour in caveats:
        draw.text((margin, y), line, font=small, fill=colour)
        y += int(line_h * 0.85)

    # 7. Footer: who made it.
    for line in footer:
        draw.text((margin, y + margin // 3), line, font=small, fill=DIM)
        y += int(line_h * 0.85)
    return image


def _draw_table(
    draw: ImageDraw.ImageDraw,
    result: SeriesResult,
    x0: int,
    y: int,
    unit: float,
    body: ImageFont.ImageFont,
    bold: ImageFont.ImageFont,
    line_h: int,
) -> int:
    """Draw the per-artery table (Agatston, volume, [mass], lesions; numbers right-aligned); return its right edge."""
    with_mass = result.score.total.mass_mg is not None
    headers = ["Artery", "Agatston", "Volume mm\u00b3"] + (["Mass mg"] if with_mass else []) + ["Lesions"]
    widths = [int(w * unit) for w in ([120, 180, 230] + ([180] if with_mass else []) + [160])]
    rows = [(name, result.score.arteries[name]) for name in ARTERY_NAMES] + [("Total", result.score.total)]

    def cells(name: str, s: ArteryScore) -> list[str]:
        values = [name, f"{s.agatston:.1f}", f"{s.volume_mm3:.1f}"]
        if with_mass:
            values.append(f"{s.mass_mg:.1f}")
        return values + [str(s.lesions)]

    for i, (texts, face, colour) in enumerate(
        [(headers, bold, DIM)]
        + [(cells(n, s), bold if n == "Total" else body, ARTERY_COLOURS.get(n, TEXT)) for n, s in rows]
    ):
        x = x0
        for j, (text, w) in enumerate(zip(texts, widths)):
            fill = colour if (j == 0 or i == 0) else TEXT
            tx = x if j == 0 else x + w - text_width(draw, text, face)
            draw.text((tx, y), text, font=face, fill=fill)
            x += w
        if i == 0 or i == len(rows) - 1:
            rule_y = y + line_h - int(4 * unit)
            draw.line((x0, rule_y, x, rule_y), fill=DIM, width=max(1, int(2 * unit)))
        y += line_h
    return x0 + sum(widths)


def build_summary(
    result: SeriesResult, labels: np.ndarray, series: CTSeries, identity: AlgorithmIdentity, config: ReportConfig
) -> Dataset:
    """The summary image as a Secondary Capture Image Storage dataset in the source study.

    Parameters
    ----------
    result, labels, series
        The scored series, its label map and the loaded series.
    identity
        The algorithm, named on the image and in the equipment attributes.
    config
        Width, key-slice count, caution text, series number and description.

    Returns
    -------
    pydicom.dataset.Dataset
        A highdicom :class:`~highdicom.sc.SCImage`, RGB 8 bit, fresh UIDs.
    """
    pixels = np.asarray(render_summary(result, labels, series, identity, config))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header_copy(series.datasets[0]),
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        # The tiles are axial CT in the usual display orientation: rows run to
        # the patient's left, columns to posterior (PS3.3 C.7.6.1.1.1).
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "P"),
        series_instance_uid=hd.UID(),
        series_number=config.summary_series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=identity.manufacturer,
        # Lossless, so text and outlines stay sharp.  JPEG-LS (PS3.5 A.4.3, via
        # pyjpegls) makes an 11 MB summary of 512x512 CT tiles about 1.5 MB;
        # RLE Lossless only about 7 MB, as the CT noise breaks its runs.
        transfer_syntax_uid=JPEGLSLossless,
    )
    sc.SeriesDescription = config.summary_series_description
    # A cardiac image: with the (unpaired) body part named, Laterality is not
    # required (PS3.3 C.7.3.1, Type 2C); dciodvfy flags its absence otherwise.
    sc.BodyPartExamined = "HEART"
    sc.BurnedInAnnotation = "NO"  # text on the image, but no patient identifiers (PS3.3 C.7.6.1.1.7)
    sc.ImageComments = config.caution
    sc.ManufacturerModelName = identity.name
    sc.SoftwareVersions = identity.software_version
    sc.DerivationDescription = f"Calcium score summary of series {result.series_uid}"
    logger.debug("series %s: summary image %dx%d built", result.series_uid, pixels.shape[1], pixels.shape[0])
    return sc
