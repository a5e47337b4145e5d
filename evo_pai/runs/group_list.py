"""`evo-pai list-groups CONFIG`: the config's model's channel groups (models/channel_groups.py), each
with its layers, channels and share of the masked MACs, proven against physical pruning first — and
what is never pruned (the input's channels, the output layer's classes, fixed groups with why)."""
from __future__ import annotations

from evo_pai.core.config import Config
from evo_pai.data.datasets import load_data
from evo_pai.models.group_check import channel_structure
from evo_pai.models.prunable import masked_names, output_layer_name
from evo_pai.runs.preflight import check_config
from evo_pai.training.tasks import initial_model


def group_rows(cfg: Config) -> tuple[list[dict], list[str]]:
    """(one row per group, lines about what is never pruned)."""
    check_config(cfg)
    data = load_data(cfg.data)
    model = initial_model(cfg, data)
    names = masked_names(model, cfg.masks)
    out = output_layer_name(model)
    structure = channel_structure(model, data.input_shape, names, out if out in names else None)
    rows = []
    for g in structure.groups:
        share = g.macs / structure.dense_macs if structure.dense_macs else 0.0
        rows.append({**g.brief(), "macs_share": share})
    never = [f"the input's {data.input_shape[0]} channel(s)" if len(data.input_shape) > 1 else
             f"the input's {data.input_shape[0]} features",
             f"the output layer's {data.num_classes} classes ({out})"]
    return rows, never


def format_rows(rows: list[dict], never: list[str]) -> list[str]:
    cells = [("group", "root", "channels", "MACs", "layers")] + [
        (str(r["group"]), r["root"], str(r["channels"]), f"{100 * r['macs_share']:.1f} %" if not r["fixed"] else "fixed",
         ", ".join(r["layers"]) + (f"  [never pruned: {r['fixed']}]" if r["fixed"] else "")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(c[:4], widths)) + "  " + c[4] for c in cells]
    free = sum(1 for r in rows if not r["fixed"])
    lines.append(f"{free} of {len(rows)} groups prunable (MACs: share of the masked weights' multiply-adds each "
                 "group's channels scale); never pruned: " + "; ".join(never))
    return lines
