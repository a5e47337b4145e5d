"""`evo-pai study` and `evo-pai report`: the grid of cells, its runner, fitness predictiveness, tables and plots."""
