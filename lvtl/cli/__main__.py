"""``python -m lvtl.cli``."""

from lvtl.cli.app import main

main()
