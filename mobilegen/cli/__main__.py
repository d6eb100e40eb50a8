"""`python -m mobilegen.cli ...` is the `mobilegen-export` command."""

from mobilegen.cli import export_cli

if __name__ == "__main__":
    export_cli()
