"""``python -m terminal``: the same as the ``iso-terminal`` console script."""

from terminal.cli import main

if __name__ == "__main__":
    main()
