"""The `bridgerl` command: the table of commands (commands), running one (main), its result on stdout (output)."""

from bridgerl.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
