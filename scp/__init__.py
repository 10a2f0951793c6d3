"""The DICOM node: receive, complete, schedule, deliver."""
