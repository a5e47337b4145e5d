"""`python -m evo_pai.cli ...` is the `evo-pai` command."""
from evo_pai.cli.app import main

main()
