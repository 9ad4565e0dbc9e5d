"""Subcommands of the ``dmoerm`` command, one module each (see :mod:`dmoerm_trl.cli`)."""
