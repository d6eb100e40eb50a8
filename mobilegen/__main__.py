"""`python -m mobilegen ...` is the `mobilegen` command (what `torchrun -m mobilegen train ...` runs)."""

from mobilegen.cli import main_cli

if __name__ == "__main__":
    main_cli()
