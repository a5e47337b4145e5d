"""Importing this module registers every built-in search method."""
from . import baselines, combined, dissipating, kstarts, nsga2  # noqa: F401
from . import dynamic, gmp, imp, kstarts_sh, oneshot  # noqa: F401
