"""Moved to ``berdiff diagnose paired`` (the same options and tables); kept for existing commands."""
import sys
from napari_berdiff.cli import main
sys.exit(main(["diagnose", "paired", *sys.argv[1:]]))
