"""``python -m wsss_fast``: the same as the ``wsss-fast`` command."""
from .cli import main

raise SystemExit(main())
