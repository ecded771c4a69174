"""The ``awqinfer`` command line."""
