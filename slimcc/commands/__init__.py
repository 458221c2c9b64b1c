"""Subcommands of the `slimcc` CLI; each module defines `add_parser(subparsers)`."""
