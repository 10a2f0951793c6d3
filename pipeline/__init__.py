"""CT series to calcium scores, with no network I/O and no training: three jobs, one subpackage each.

- ``pipeline.reading``: DICOM files to a sorted HU volume with its geometry, the eligibility rules, reference labels;
- ``pipeline.scoring``: the Agatston definition and its measures as pure functions, and the scored result;
- ``pipeline.model``: preprocessing and heart localisation, the network, the lesion classifier, weights, inference.

Dependencies point one way: ``scoring.agatston`` is pure (arrays in, a frozen result out) and imports no other
subpackage; ``scoring.result`` and ``scoring.flags`` read a series' facts from ``reading``; ``model`` uses both.
"""
