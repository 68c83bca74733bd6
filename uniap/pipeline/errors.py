"""The pipeline's error for outputs it will not write, apart so that the planner and the lock
files (:mod:`~uniap.pipeline.plan`, :mod:`~uniap.pipeline.locks`) share it without importing
each other."""


class PlanError(ValueError):
    """Outputs that cannot be written safely (a clash with an input, an existing file, ...)."""
