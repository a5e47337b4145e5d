"""Importing this module registers every built-in component."""
from . import data, fitness, models, operators  # noqa: F401
from . import pruners  # noqa: F401
from .evaluation import local  # noqa: F401
from .evaluation import ray as _ray_backend  # noqa: F401  (imports ray only when used)
from .evaluation import vectorized  # noqa: F401
from . import search  # noqa: F401
