"""Scaling out on engines that already exist: engine replicas in their own processes, Ray Data actors, torchrun.

=================  =================================================================================================
replicas           N generation engines on one server, each in its own process (its own GPU group, or its share of
                   the CPU cores), answering a shard of the prompts; answers merge through the answer cache
ray_generate       the same backends as Ray Data actors on a Ray cluster (``generate.ray_address``)
torchrun           ``train.nproc`` processes launched with ``torch.distributed.run`` by ``offline-embft train``
=================  =================================================================================================

Nothing here schedules work of its own: a replica answers the shard it is given, Ray Data streams batches to its
actor pool, torchrun starts and watches the training processes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from offline_embft.generate.llm import BatchLLM, backend_class, prepare
from offline_embft.generate.scale.replicas import ReplicaPool, ReplicaUsage, plan_replicas

if TYPE_CHECKING:
    from offline_embft.core.config import GenerateConfig

__all__ = ["ReplicaPool", "ReplicaUsage", "create_engine", "plan_replicas"]

logger = logging.getLogger(__name__)


def create_engine(cfg: GenerateConfig, *, template: str = "{context}") -> BatchLLM:
    """The question generator ``cfg`` asks for: one backend in this process, N replicas, or Ray Data actors.

    Reads top-down, each module visited once: the backend's class (its facts, from
    :mod:`offline_embft.generate.llm.registry`), where its engines run (Ray actors, or the replica plan made from
    those facts and the visible GPUs), the engine itself, then how it answers (:func:`prepare`).

    Raises:
        UserError: as :func:`offline_embft.generate.llm.create_llm`; also Ray missing or unreachable, or a replica
            that fails to start.
    """
    backend = backend_class(cfg.backend)
    if cfg.ray_address:
        from offline_embft.generate.scale.ray_generate import RayEngine

        engine: BatchLLM = RayEngine(cfg, template=template)
    else:
        plan = plan_replicas(cfg, backend)
        one = plan.size == 1
        engine = backend.from_config(cfg, template) if one else ReplicaPool(cfg, template=template, plan=plan)
    return prepare(engine, cfg, template)
