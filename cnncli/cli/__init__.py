"""The ``cnn`` command line: thin typer commands over the ``cnncli`` library."""
