"""Subcommands of the ddsync command line that belong to the pipeline."""
