"""Search methods: one module per method, each a DEAP-style loop over `Individual`s.

`search.methods` imports (and so registers) every built-in method; `search.experiment` is what a
method receives. Nothing here imports `ray` or `torch.cuda`.
"""
