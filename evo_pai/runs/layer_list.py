"""`evo-pai list-layers CONFIG`: every parameter of the config's model, prunable or not, and why
(the same rows a run's summary.json holds under `parameters`)."""
from __future__ import annotations

from evo_pai.core.config import Config
from evo_pai.data.datasets import load_data
from evo_pai.models.prunable import masked_roles, roles_table
from evo_pai.runs.preflight import check_config, meta_model
from evo_pai.training.tasks import initial_model


def parameter_rows(cfg: Config) -> list[dict]:
    """Rows of `roles_table` for the model `cfg` builds (on the meta device when it can: no memory)."""
    check_config(cfg)
    data = load_data(cfg.data)
    model = meta_model(cfg, data) or initial_model(cfg, data)
    return roles_table(masked_roles(model, cfg.masks))
