"""Training of the calcium model (needs the ``training`` extra) and the synthetic phantoms.

Nothing imported at package level needs Lightning: the phantom generator and
the config run with the node's dependencies alone.
"""
