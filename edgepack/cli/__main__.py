"""`python -m edgepack.cli` runs the command line."""

from edgepack.cli import main

main()
