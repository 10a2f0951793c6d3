"""cacnode: a DICOM node that scores coronary artery calcium (not a medical device)."""

__version__ = "0.1.0"
