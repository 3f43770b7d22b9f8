"""``python -m switch``: the same as the ``iso-switch`` console script."""

from switch.cli import main

if __name__ == "__main__":
    main()
