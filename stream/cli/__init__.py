"""The ``ddsync`` command line: :mod:`stream.cli.main` builds the parser, one module per
subcommand adds its own (the composition roots)."""
