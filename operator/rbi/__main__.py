"""`python -m rbi` is the same as the `rbi` command."""

from rbi.cli.main import main

main()
