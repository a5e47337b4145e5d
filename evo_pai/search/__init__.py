"""Search methods, each registered by name: fn(exp: Experiment) -> SearchOutcome."""
from . import baselines, combined, dissipating, kstarts  # noqa: F401
