"""A plugin model as a user would write one (`plugins: [byo_plugin]`), for tests/test_python_api.py:
an nn.Sequential registered under a name evo-pai does not ship (compact export needs a plain chain)."""
from torch import nn

from evo_pai import register_model


@register_model("byo_mlp", "a user's plugin MLP (tests)")
def byo_mlp(input_shape, num_classes, hidden: int = 24):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))
