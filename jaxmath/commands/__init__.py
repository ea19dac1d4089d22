"""The command line's working parts: one module per `jaxmath` subcommand family (argument parsing, error
reporting, exit status); the library below them never parses arguments."""
