"""How well the model agrees with reference labels: the maths, and ``cacnode evaluate`` on a site's series.

Needs only the node's own dependencies (no Lightning): a site checks the
model on its scanners with the node as installed.  ``metrics`` is pure numpy
and shared with training; ``cases`` finds the series and their labels,
``run`` scores them, ``summary`` turns the outcomes into figures, ``plots``
and ``report`` write them.
"""
