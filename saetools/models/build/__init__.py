"""Training of the bundled models (``tiny-ioi``, ``tiny-rotary``).

Only the build scripts in ``scripts/`` and the tests import this package; what the library
needs at run time (the corpora and their packing) lives in :mod:`saetools.models.corpus`.
"""
