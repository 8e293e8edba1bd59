"""`python -m proxy` is the `anima` command."""

from proxy.cli import main

main()
