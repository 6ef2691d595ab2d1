"""The supervisor's command line: parser, subcommands, reports (supervisor process)."""
