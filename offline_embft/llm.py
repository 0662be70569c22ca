"""The public import path of the question-generation LLMs (``from offline_embft.llm import create_llm``), kept where
users' scripts already find it; the backends live in :mod:`offline_embft.generate.llm`."""

from offline_embft.generate.llm import *  # noqa: F403
from offline_embft.generate.llm import __all__, create_llm, prepare  # noqa: F401
