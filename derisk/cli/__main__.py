"""`python -m derisk.cli`: the same as the `derisk` command."""

from derisk.cli import main

main()
