"""`python -m headmine ...` is the `headmine` command."""

from headmine.cli.main import main

main()
