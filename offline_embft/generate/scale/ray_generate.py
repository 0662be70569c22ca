"""Generation across servers: Ray Data streams prompt batches to actor replicas of the same backend.

``generate.ray_address`` picks the cluster (``local`` starts one on this machine, ``auto`` joins the one
``ray start`` runs here, ``ray://head:10001`` connects from outside it). Each round of prompts becomes a Ray Dataset;
``map_batches`` with an actor class and ``ActorPoolStrategy(size=N)`` keeps N engine actors (``num_gpus`` =
the engine's GPUs each: one vLLM engine per GPU group, anywhere in the cluster) and feeds them batches; the driver
iterates the results as they stream out and the generate stage writes each batch to the answer cache, which is the
merge point, as with in-process replicas.

Every node needs the same environment (offline-embft installed) and the model at the same path. Each answer carries
the identity of the model that wrote it; an actor whose model differs from the driver's stops the run, so a node with
another checkpoint at that path cannot mix answers into the dataset. If a node dies, Ray restarts its actors
elsewhere and retries their batches; if the job fails anyway, every answer that reached the driver is cached and a
rerun asks only for the rest.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.core.errors import UserError
from offline_embft.generate.llm import BACKENDS, backend_class, create_llm, resolve_model
from offline_embft.generate.llm.base import AnsweredBatch, Sampling
from offline_embft.generate.scale.replicas import Factory, FrontLLM, build_backend

if TYPE_CHECKING:
    from offline_embft.core.config import GenerateConfig

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "generate.ray_address needs Ray, which is not installed here; `pip install 'offline-embft[ray]'` on every node "
    "(the air-gap bundle carries it with `--extras ray`)"
)


def import_ray() -> Any:
    """Import Ray or fail with one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def connect(address: str) -> bool:
    """Start or join the Ray cluster at ``address``; True when this call connected (and must disconnect).

    Raises:
        UserError: Ray is missing, or no cluster answers at ``address``.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    # A local instance is ours to configure: no dashboard (a web server nobody asked for on an air-gapped node).
    # Usage stats are off through RAY_USAGE_STATS_ENABLED=0 (offline.py), for `ray start` as well.
    extra: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, **extra)
    except ConnectionError as exc:
        hint = (
            "start one with `ray start --head` (docs/scale.md) or use generate.ray_address=local"
            if address == "auto"
            else "check the address and that `ray start --head` runs there"
        )
        raise UserError(f"no Ray cluster at {address!r} ({str(exc).splitlines()[0][:120]}); {hint}") from None
    return True


class _RayReplica:
    """A Ray Data actor: one engine of the backend, answering the batches Ray Data sends it."""

    def __init__(self, cfg: GenerateConfig, template: str, factory: Factory) -> None:
        import ray

        self.llm = factory(cfg, template)
        self.actor = ray.get_runtime_context().get_actor_id() or "driver"
        self.node = ray.util.get_node_ip_address()

    def __call__(self, batch: dict[str, Any], seed: int | None) -> dict[str, Any]:
        import numpy as np

        began = time.perf_counter()
        answers = self.llm.complete_batch([str(p) for p in batch["prompt"]], seed=seed, raw=True)
        seconds = time.perf_counter() - began
        refusals = self.llm.last_refusals
        size = len(answers)
        call = uuid.uuid4().hex
        return {
            "key": batch["key"],
            "answer": np.array([a or "" for a in answers], dtype=object),
            "failed": np.array([a is None for a in answers]),
            "refused": np.array([refusals.get(i, "") for i in range(size)], dtype=object),
            "identity": np.array([self.llm.identity] * size, dtype=object),
            "actor": np.array([self.actor] * size, dtype=object),
            "node": np.array([self.node] * size, dtype=object),
            "call": np.array([call] * size, dtype=object),
            "seconds": np.full(size, seconds),
        }


def _local_view(cfg: GenerateConfig, template: str) -> dict[str, Any]:
    """What the driver must know without loading the model: the cache identity, names, the kind of queries.

    Raises:
        UserError: the backend cannot run as Ray actors, or the model is not at its path on this node.
    """
    backend = backend_class(cfg.backend)
    if not backend.runs_replicas:
        local = ", ".join(name for name, cls in BACKENDS.items() if cls.runs_replicas and cls.needs_local_weights)
        raise UserError(
            f"backend {cfg.backend} {backend.spreads_work}; generate.ray_address runs local engines ({local}) as "
            "Ray actors"
        )
    if not backend.needs_local_weights:  # no model: building it here is free
        llm = create_llm(cfg, template=template)
        pseudo = llm.pseudo_queries
        return {"identity": llm.identity, "model_name": llm.model_name, "pseudo": pseudo, "settings": llm.settings()}
    model = resolve_model(cfg.model, cfg.models_dir)
    return {
        "identity": f"{backend.backend}:{model.fingerprint()}",
        "model_name": model.name,
        "pseudo": backend.pseudo_queries,
        "settings": {"backend": backend.backend, "model": model.name, "model_path": str(model.path)},
    }


class RayEngine(FrontLLM):
    """The backend ``cfg`` names, run as a pool of Ray Data actors; used by the generate stage like one backend.

    Args:
        cfg: The generate config (``ray_address`` set).
        template: The prompt template.
        factory: Builds an actor's engine (a picklable function; default: the backend ``cfg`` names).

    Raises:
        UserError: Ray missing or unreachable, an unsuitable backend, or the model missing on this node.
    """

    backend = "ray"

    _cfg: Any = PrivateAttr(default=None)
    _template: str = PrivateAttr(default="")
    _factory: Any = PrivateAttr(default=None)
    _actors: int = PrivateAttr(default=1)
    _gpus: int = PrivateAttr(default=0)
    _owns_connection: bool = PrivateAttr(default=False)
    _actor_index: dict[tuple[str, str], int] = PrivateAttr(default_factory=dict)

    def __init__(self, cfg: GenerateConfig, *, template: str = "{context}", factory: Factory = build_backend) -> None:
        view = _local_view(cfg, template)
        owns = connect(cfg.ray_address)
        ray = import_ray()
        gpus = backend_class(cfg.backend).gpus_per_engine(cfg)
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
        if cfg.data_parallel_size == "auto":
            actors = max(1, cluster_gpus // gpus) if gpus and cluster_gpus else 1
        else:
            actors = int(cfg.data_parallel_size)
        if gpus and actors * gpus > cluster_gpus:
            raise UserError(
                f"{actors} Ray actors × {gpus} GPU(s) need {actors * gpus} GPUs; the cluster has {cluster_gpus} "
                "(add nodes with `ray start --address`, or lower generate.data_parallel_size)"
            )
        super().__init__(model_name=view["model_name"], sampling=Sampling.from_config(cfg))
        self._cfg, self._template, self._factory = cfg, template, factory
        self._identity, self._pseudo = view["identity"], view["pseudo"]
        self._actors, self._gpus, self._owns_connection = actors, gpus, owns
        self._settings = {
            **view["settings"],
            "ray_address": cfg.ray_address,
            "replicas": actors,
            "gpus_per_replica": gpus,
            "cluster_gpus": cluster_gpus,
        }
        logger.info("Ray: %d actors of backend %s, %d GPU(s) each", actors, cfg.backend, gpus)

    def settings(self) -> dict[str, Any]:
        return {**self._settings, "replica_nodes": sorted({node for node, _ in self._actor_index})}

    def answer_stream(
        self, items: Sequence[tuple[str, str]], *, seed: int | None, batch_size: int, raw: bool | None = None
    ) -> Iterator[AnsweredBatch]:
        """Run one Ray Data job over the items; yield each actor call's answers as they reach the driver.

        Raises:
            UserError: an actor answered with another model, or the Ray job failed (after yielding what arrived).
        """
        if not items:
            return
        ray = import_ray()
        dataset = ray.data.from_items(
            [{"key": key, "prompt": prompt} for key, prompt in items],
            override_num_blocks=max(1, -(-len(items) // batch_size)),  # about one block per engine batch
        )
        answered = dataset.map_batches(
            _RayReplica,
            fn_constructor_kwargs={"cfg": self._cfg, "template": self._template, "factory": self._factory},
            fn_kwargs={"seed": seed},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=self._actors),
            num_gpus=self._gpus or None,
            num_cpus=1,
        )
        try:
            prompts = dict(items)
            for block in answered.iter_batches(batch_size=None, batch_format="numpy"):
                for batch in self._batches(block):
                    yield self._cleaned(batch, prompts, raw)
        except UserError:
            raise
        except Exception as exc:  # RayTaskError, ActorDiedError, ...: the cluster's problem, told in one line
            raise UserError(
                f"the Ray job failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); every answer "
                "that reached this machine is in the answer cache: fix the cluster and run the same command again"
            ) from None

    def _batches(self, block: dict[str, Any]) -> Iterator[AnsweredBatch]:
        calls: dict[str, list[int]] = defaultdict(list)
        for row, call in enumerate(block["call"]):
            calls[str(call)].append(row)
        for rows in calls.values():
            first = rows[0]
            identity, node = str(block["identity"][first]), str(block["node"][first])
            if identity != self._identity:
                raise UserError(
                    f"the Ray actor on node {node} answers with {identity}, this machine has {self._identity}: "
                    "put the same model at the same path on every node"
                )
            index = self._actor_index.setdefault((node, str(block["actor"][first])), len(self._actor_index))
            answers = [
                (str(block["key"][r]), None if bool(block["failed"][r]) else str(block["answer"][r])) for r in rows
            ]
            refused = {str(block["key"][r]): str(block["refused"][r]) for r in rows if block["refused"][r]}
            self._engine_calls += 1
            yield AnsweredBatch(answers, replica=index, seconds=float(block["seconds"][first]), refused=refused)

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        answers: dict[str, str | None] = {}
        items = [(str(i), p) for i, p in enumerate(prompts)]
        for batch in self.answer_stream(items, seed=sampling.seed, batch_size=len(prompts), raw=True):
            answers.update(batch.answers)
        return [answers.get(str(i)) for i in range(len(prompts))]

    def close(self) -> None:
        if self._owns_connection:
            import_ray().shutdown()
            self._owns_connection = False
