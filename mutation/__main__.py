"""``python -m mutation``: run the catalogue of planted bugs (see ``mutation/run.py``)."""

from .run import main

raise SystemExit(main())
