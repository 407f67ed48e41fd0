"""``python -m multistore`` runs the command line."""

from multistore.cli import main

main()
