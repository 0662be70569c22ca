"""Typed configuration: one dataclass per stage section (a module each, beside this one) and one
:class:`PipelineConfig` that holds them all.

Precedence, lowest to highest: dataclass defaults < YAML file (``--config``) < ``--set section.key=value`` < the
command's own flags. Each dataclass validates itself in ``__post_init__`` so a bad value fails with one line before
any model is loaded. Empty path fields are filled by :meth:`PipelineConfig.resolve` from the artifact layout in
:mod:`offline_embft.core.layout`, so a stage run on its own and a stage run by ``all`` read and write the same files.

A new section is one module here (a dataclass whose fields carry their help, built with
:func:`~offline_embft.core.config.fields.documented`) plus one field on :class:`PipelineConfig`; docs/config.md is
generated from the fields (``offline-embft config --keys``).
"""

from __future__ import annotations

from offline_embft.core.config.convert import POOLINGS, ConvertConfig
from offline_embft.core.config.evaluate import EvaluateConfig
from offline_embft.core.config.fields import EXTEND_VOCAB, NEGATIVE_SOURCES, PRECISIONS
from offline_embft.core.config.files import apply_overrides, load_config, save_config, to_dict
from offline_embft.core.config.general import GeneralConfig
from offline_embft.core.config.generate import BACKENDS, ENGINES, ROUNDTRIP_MODES, GenerateConfig
from offline_embft.core.config.ingest import CHUNKINGS, IngestConfig
from offline_embft.core.config.pipeline import STAGES, PipelineConfig
from offline_embft.core.config.serve import ServeConfig
from offline_embft.core.config.train import LOSSES, TrainConfig
from offline_embft.core.config.train_reranker import RERANKER_LOSSES, TrainRerankerConfig

__all__ = [
    "BACKENDS",
    "CHUNKINGS",
    "ENGINES",
    "EXTEND_VOCAB",
    "LOSSES",
    "NEGATIVE_SOURCES",
    "POOLINGS",
    "PRECISIONS",
    "RERANKER_LOSSES",
    "ROUNDTRIP_MODES",
    "STAGES",
    "ConvertConfig",
    "EvaluateConfig",
    "GeneralConfig",
    "GenerateConfig",
    "IngestConfig",
    "PipelineConfig",
    "ServeConfig",
    "TrainConfig",
    "TrainRerankerConfig",
    "apply_overrides",
    "load_config",
    "save_config",
    "to_dict",
]
