"""``python -m segbench`` is the ``segbench`` console script."""

from segbench.cli import main

main()
