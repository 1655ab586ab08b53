"""``python -m src_training.prepare brats|oct|folder SRC OUT``: the same parsers as ``berdiff prepare-*``."""

from .cli import main

raise SystemExit(main())
