"""``cacnode score``: load a series, label it (annotation or model), score, print, write reports."""

from __future__ import annotations

import argparse
import json
import sys

from cacnode.config import Config
from cacnode.output_paths import check_output_paths
from pipeline.errors import SeveralSeriesError
from pipeline.model.identity import reference_labels
from pipeline.reading.loader import load_series
from pipeline.scoring.result import format_table, score_series, to_json


def run_score(args: argparse.Namespace, config: Config) -> int:
    # before the scoring: a report that cannot be written must not cost the wait
    check_output_paths({"--sr": args.sr, "--seg": args.seg, "--summary": args.summary})
    try:
        series = load_series(
            args.series_dir,
            series_uid=args.series_uid,
            max_obliquity_degrees=config.eligibility.max_obliquity_degrees,
        )
    except SeveralSeriesError as exc:
        raise exc.choose_with("--series-uid") from None
    if args.labels is not None:
        from pipeline.model.preprocess import Preprocess, PreprocessConfig
        from pipeline.reading.labels_io import labels_origin, read_labels

        labels = read_labels(args.labels, series)
        identity = reference_labels(labels_origin(args.labels))
        source = f"labels:{args.labels.name}"
        # No model: the heart crop is the classical localiser's (no network), with the
        # preprocessing defaults that the bundled weights also use.
        g = series.geometry
        heart_box = Preprocess(PreprocessConfig()).crop_box(series.hu, g.pixel_spacing_mm, g.increment_mm)
    else:
        from pipeline.model.inference import Labeller

        labeller = Labeller.load(config.model, device=args.device)
        labels = labeller.predict(series)
        heart_box = labeller.heart_box(series)
        identity = labeller.identity
        source = f"model:{identity.name} {identity.version}"
    result = score_series(series, labels, config.scoring, source, heart_box=heart_box)
    if args.sr or args.seg or args.summary:
        from dicom_sr.writer import write_report_files

        write_report_files(
            result,
            labels,
            series,
            identity,
            config.report,
            sr_path=args.sr,
            seg_path=args.seg,
            summary_path=args.summary,
        )
    if args.json:
        json.dump(to_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
    return 0
