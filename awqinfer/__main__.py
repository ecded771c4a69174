"""``python -m awqinfer``: the same command line as the ``awqinfer`` script."""

from .cli.main import main

raise SystemExit(main())
