"""offline_embft: fine-tune embedding models for Chinese RAG on air-gapped machines."""

from offline_embft.core import offline as _offline

# Importing the package is an entry point too (scripts, notebooks): stay off the network from the first line.
_offline.enable()

__version__ = "0.1.0"
