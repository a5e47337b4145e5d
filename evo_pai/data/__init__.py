"""data: see docs/architecture.md."""
from evo_pai.core.moved import moved_attributes

# Names earlier docs imported from the package (evo_pai/data.py before 0.1's folders): now evo_pai.plugin.
__getattr__ = moved_attributes(__name__, dict.fromkeys(("DataSplits", "split_validation", "standardize"),
                                                       "evo_pai.data.datasets"))
