"""Importing this module registers every built-in search method."""
from evo_pai.search import baselines, combined, dissipating, kstarts, nsga2  # noqa: F401
from evo_pai.search import gmp, imp, kstarts_sh, lineages, oneshot, sparse_training  # noqa: F401
