"""`python -m convscope` runs the command line."""

from convscope.cli import main

main()
