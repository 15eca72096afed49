"""alchemist-pl: meta-gradient data selection for text-to-image models (Alchemist, arXiv 2512.16905)."""

__version__ = "0.1.0"
