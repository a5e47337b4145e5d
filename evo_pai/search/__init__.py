"""Search methods, each registered by name: fn(exp: Experiment) -> SearchOutcome."""
from . import baselines, combined, dissipating, kstarts  # noqa: F401
from . import gmp, imp, kstarts_sh, oneshot  # noqa: F401
