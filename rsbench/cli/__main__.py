"""`python -m rsbench.cli` (torchrun launches it this way)."""

from rsbench.cli.app import main

if __name__ == "__main__":
    main()
