"""The `kdlab` command. Each `cmd_*.py` module adds one or more subcommands."""
