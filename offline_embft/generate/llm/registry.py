"""The registry of question-generation backends: name → :class:`~offline_embft.generate.llm.base.BatchLLM` class.

Each backend class carries its facts (``needs_gpu``, ``needs_local_weights``, ``needs_base_url``, ``runs_replicas``,
``engine_package``, ``extra``, ``gpus_per_engine``) and builds itself from the config (``from_config``). Whoever
needs to know something about a backend asks its class here: :func:`offline_embft.generate.llm.create_llm`,
replica planning and Ray (:mod:`offline_embft.generate.scale`), ``offline-embft doctor`` and ``download``. A new
backend is one module with its class plus one :func:`register_backend` line in :mod:`offline_embft.generate.llm`.

The config's ``generate.backend`` choices (core, which cannot import this) are kept in step by registration:
:func:`register_backend` adds the name to :data:`offline_embft.core.config.BACKENDS`, and a test checks that the
built-in names there are exactly the registered ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from offline_embft.core.config import generate as generate_config
from offline_embft.core.errors import UserError

if TYPE_CHECKING:
    from offline_embft.generate.llm.base import BatchLLM

BACKENDS: dict[str, type[BatchLLM]] = {}  # in registration order: the order help and errors list them in


def register_backend(cls: type[BatchLLM]) -> type[BatchLLM]:
    """Register ``cls`` under its ``backend`` name (a second class under the same name replaces the first)."""
    BACKENDS[cls.backend] = cls
    if cls.backend not in generate_config.BACKENDS:
        generate_config.BACKENDS = (*generate_config.BACKENDS, cls.backend)
    return cls


def backend_class(name: str) -> type[BatchLLM]:
    """The class registered as ``name``.

    Raises:
        UserError: no backend of that name, naming the registered ones.
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; use {', '.join(BACKENDS)}") from None
