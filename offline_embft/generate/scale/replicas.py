"""N generation engines on one server, each in its own process, answering shards of the prompts in parallel.

On GPUs each replica is pinned to its own group of ``tensor_parallel_size`` GPUs with ``CUDA_VISIBLE_DEVICES`` (so
8 GPUs and Qwen3-8B on one GPU each give 8 vLLM engines instead of one engine and seven idle GPUs); on CPU each
replica gets its share of the cores (affinity and thread count), so replicas do not fight over the same cores.

The parent process never loads a model. It deals each round's prompts out to the replicas (item ``i`` to replica
``i mod N``: the prompts arrive sorted by length, so every shard gets the same mix), and yields every batch a replica
sends back as soon as it arrives; the generate stage writes it to the answer cache before waiting for the next. A
replica that dies therefore loses only the batch it was working on: its earlier answers are on disk, the other
replicas finish their shards, and the stage then stops with one line saying to run it again, which asks only for what
is missing. Each replica talks to the parent over its own pipe, so a replica killed mid-write cannot wedge a lock that
the others need (as a shared ``multiprocessing.Queue`` could).

The dataset is the same with any number of replicas: every backend seeds each prompt, not each batch (vLLM and
OpenAI-compatible servers take a seed per request; the transformers backend draws each prompt's tokens from its own
generator), so an answer does not depend on which replica, or which batch, it came from.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.core import offline
from offline_embft.core.errors import UserError
from offline_embft.core.gpu_compat import visible_gpus
from offline_embft.generate.llm import backend_class, create_llm
from offline_embft.generate.llm.base import AnsweredBatch, BatchLLM, Sampling
from offline_embft.generate.questions import FilterSettings

if TYPE_CHECKING:
    from offline_embft.core.config import GenerateConfig

logger = logging.getLogger(__name__)

# Set in each replica's environment: its index (for logs, and for tests that need one replica to misbehave).
REPLICA_ENV = "OFFLINE_EMBFT_REPLICA"
READY_TIMEOUT_S = 3600.0  # a 32B model on slow disks can take many minutes to load; a hung start still ends
CLOSE_TIMEOUT_S = 30.0

Factory = Callable[["GenerateConfig", str], BatchLLM]


def build_backend(cfg: GenerateConfig, template: str) -> BatchLLM:
    """The default replica engine: the backend ``cfg`` names, built inside the replica's own process."""
    return create_llm(cfg, template=template)


# ---------------------------------------------------------------------------------------------------------------
# How many replicas, and what each one gets


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas to start and what each one is given: a GPU group, or a set of CPU cores."""

    size: int
    gpu_groups: list[list[str]] = field(default_factory=list)
    cpu_sets: list[list[int]] = field(default_factory=list)

    def device(self, index: int) -> str:
        """Human-readable placement of replica ``index`` (for logs and the stats file)."""
        if self.gpu_groups:
            return "cuda:" + ",".join(self.gpu_groups[index])
        cores = self.cpu_sets[index] if self.cpu_sets else []
        return f"cpu ({len(cores)} cores: {','.join(map(str, cores))})" if cores else "cpu"

    def environment(self, index: int) -> dict[str, str]:
        """Environment variables replica ``index`` starts with."""
        env = {REPLICA_ENV: str(index)}
        if self.gpu_groups:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_groups[index])
        elif self.cpu_sets:
            threads = str(len(self.cpu_sets[index]))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env


def plan_replicas(cfg: GenerateConfig, backend: type[BatchLLM] | None = None) -> ReplicaPlan:
    """Resolve ``generate.data_parallel_size`` (auto: visible GPUs ÷ GPUs per engine, 1 without GPUs) from the
    facts of ``backend`` (default: the class registered as ``cfg.backend``).

    Raises:
        UserError: more replicas were asked for than there are GPU groups.
    """
    wanted = cfg.data_parallel_size
    backend = backend or backend_class(cfg.backend)
    if not backend.runs_replicas:
        if wanted not in ("auto", "1"):
            logger.warning(
                "generate.data_parallel_size is ignored by backend %s, which %s", cfg.backend, backend.spreads_work
            )
        return ReplicaPlan(1)
    per = backend.gpus_per_engine(cfg)
    gpus = visible_gpus() if per else []
    auto = max(1, len(gpus) // per) if gpus else 1
    size = auto if wanted == "auto" else int(wanted)
    if size == 1:
        return ReplicaPlan(1)
    if gpus:
        if size * per > len(gpus):
            raise UserError(
                f"generate.data_parallel_size {size} × {per} GPU(s) per engine needs {size * per} GPUs, but "
                f"{len(gpus)} are visible; use auto (= {len(gpus) // per}) or a smaller number"
            )
        return ReplicaPlan(size, gpu_groups=[gpus[i * per : (i + 1) * per] for i in range(size)])
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if size > len(cores):
        logger.warning("%d replicas on %d CPU cores: they will share cores", size, len(cores))
        return ReplicaPlan(size, cpu_sets=[[cores[i % len(cores)]] for i in range(size)])
    share = len(cores) // size
    return ReplicaPlan(size, cpu_sets=[cores[i * share : (i + 1) * share] for i in range(size)])


# ---------------------------------------------------------------------------------------------------------------
# The replica process


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _replica_main(
    index: int, conn: Connection, cfg: GenerateConfig, template: str, cores: list[int], factory: Factory
) -> None:
    """Body of one replica process: build the engine, then answer shards until told to close."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    try:
        llm = factory(cfg, template)
        if cores and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(len(cores))
    except UserError as exc:
        conn.send(("error", str(exc)))
        return
    except Exception as exc:
        logger.exception("replica %d could not start its engine", index)
        conn.send(("error", _first_line(exc)))
        return
    conn.send(
        (
            "ready",
            {
                "identity": llm.identity,
                "model_name": llm.model_name,
                "sampling": llm.sampling,
                "settings": llm.settings(),
                "pseudo_queries": llm.pseudo_queries,
                "budget": _budget_spec(llm),
            },
        )
    )
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone: nobody will read the answers
                break
            if message[0] == "close":
                break
            _, items, seed, batch_size = message
            # The model's text: the parent caches it, and cleans it where it is asked to (one set of counts).
            for batch in llm.answer_stream(items, seed=seed, batch_size=batch_size, raw=True):
                conn.send(("batch", batch.answers, batch.seconds, batch.refused))
            conn.send(("done",))
    except UserError as exc:
        conn.send(("error", str(exc)))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as exc:
        logger.exception("replica %d failed", index)
        conn.send(("error", _first_line(exc)))
    finally:
        llm.close()


def _budget_spec(llm: BatchLLM) -> dict[str, Any] | None:
    """How the parent can rebuild the engine's prompt budget (its tokenizer and context) without the engine."""
    budget = llm.prompt_budget
    tokenizer = getattr(budget, "tokenizer", None)
    path = getattr(tokenizer, "name_or_path", "")
    if budget is None or not path:
        return None
    return {"tokenizer": str(path), "max_model_len": budget.max_model_len, "max_new_tokens": llm.sampling.max_tokens}


def _budget_from(spec: dict[str, Any] | None) -> Any:
    """The replicas' prompt budget in the parent: prompts are fitted (shortened) here, as with one engine."""
    if not spec:
        return None
    from transformers import AutoTokenizer

    from offline_embft.generate.llm.prompt_budget import PromptBudget

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    except (OSError, ValueError) as exc:  # the replicas still refuse an over-long prompt themselves
        logger.warning("cannot load the tokenizer %s to fit prompts here: %s", spec["tokenizer"], exc)
        return None
    return PromptBudget(tokenizer, spec["max_model_len"], spec["max_new_tokens"])


def _exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class _Replica:
    index: int
    device: str
    process: Any
    conn: Connection
    alive: bool = True


# ---------------------------------------------------------------------------------------------------------------
# The pool, as one BatchLLM


class FrontLLM(BatchLLM):
    """A BatchLLM whose engines run elsewhere (replica processes, Ray actors): it speaks for their backend.

    The cache identity and the kind of queries are the backend's, so answers are cached under the same keys as with
    one in-process engine, and cleaned (for ``complete``) as that backend's would be.
    """

    _identity: str = PrivateAttr(default="")
    _settings: dict[str, Any] = PrivateAttr(default_factory=dict)
    _pseudo: bool = PrivateAttr(default=False)

    @property
    def identity(self) -> str:
        """The backend's identity (part of the answer-cache key)."""
        return self._identity

    @property
    def pseudo_queries(self) -> bool:  # type: ignore[override]
        return self._pseudo

    def default_filter_settings(self, **thresholds: Any) -> FilterSettings:  # type: ignore[override]
        """The backend's filter settings (an instance method here: the backend is only known once it answered)."""
        return FilterSettings(**thresholds, require_question=not self._pseudo, check_copy=not self._pseudo)

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def _cleaned(self, batch: AnsweredBatch, prompts: dict[str, str], raw: bool | None) -> AnsweredBatch:
        """``batch`` (raw texts) as :meth:`complete_batch` would return it for this ``raw``."""
        if self.raw if raw is None else raw:
            return batch
        answers = [(key, self._clean(prompts[key], answer)) for key, answer in batch.answers]
        return AnsweredBatch(answers, replica=batch.replica, seconds=batch.seconds, refused=batch.refused)


class ReplicaPool(FrontLLM):
    """N replicas of one backend, used by the generate stage like a single backend.

    Args:
        cfg: The generate config (each replica builds its backend from it).
        template: The prompt template (the ict backend needs it).
        plan: Replica placement (default: :func:`plan_replicas` of ``cfg``).
        factory: Builds a replica's engine inside its process; a picklable module-level function (default: the
            backend ``cfg`` names).

    Raises:
        UserError: a replica failed to start its engine (the others are stopped).
    """

    backend = "replicas"

    _replicas: list[_Replica] = PrivateAttr(default_factory=list)

    def __init__(
        self,
        cfg: GenerateConfig,
        *,
        template: str = "{context}",
        plan: ReplicaPlan | None = None,
        factory: Factory = build_backend,
    ) -> None:
        plan = plan or plan_replicas(cfg)
        size = max(plan.size, 1)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        replicas: list[_Replica] = []
        started = time.perf_counter()
        try:
            for index in range(size):
                ours, theirs = context.Pipe()
                cores = plan.cpu_sets[index] if plan.cpu_sets else []
                # Not daemonic: a vLLM engine with tensor parallelism starts worker processes of its own.
                process = context.Process(
                    target=_replica_main,
                    args=(index, theirs, cfg, template, cores, factory),
                    name=f"offline-embft-replica-{index}",
                )
                with offline.environment(plan.environment(index)):
                    process.start()
                theirs.close()  # the replica's end lives in the replica only: its death shows up here as EOF
                replicas.append(_Replica(index, plan.device(index), process, ours))
            logger.info("starting %d engine replicas: %s", size, "; ".join(r.device for r in replicas))
            infos = [self._await_ready(replica) for replica in replicas]
        except BaseException:
            _stop(replicas)
            raise
        identities = {info["identity"] for info in infos}
        if len(identities) > 1:
            _stop(replicas)
            raise UserError(f"the replicas loaded different models ({', '.join(sorted(identities))}); check the model")
        first = infos[0]
        super().__init__(model_name=first["model_name"], sampling=first["sampling"])
        self._replicas = replicas
        self._identity = first["identity"]
        self._pseudo = first["pseudo_queries"]
        self._budget = _budget_from(first["budget"])
        self._settings = {
            **first["settings"],
            "replicas": size,
            "replica_devices": [r.device for r in replicas],
            "replica_startup_seconds": round(time.perf_counter() - started, 3),
        }
        logger.info("%d replicas ready in %.1f s", size, time.perf_counter() - started)

    @staticmethod
    def _await_ready(replica: _Replica) -> dict[str, Any]:
        if not replica.conn.poll(READY_TIMEOUT_S):
            raise UserError(f"engine replica {replica.index} ({replica.device}) did not start within an hour")
        try:
            kind, payload = replica.conn.recv()
        except EOFError:
            replica.process.join(CLOSE_TIMEOUT_S)
            raise UserError(
                f"engine replica {replica.index} ({replica.device}) {_exit_reason(replica.process)} while loading "
                "its model; run with -v to see its log (out of memory?)"
            ) from None
        if kind == "error":
            raise UserError(f"engine replica {replica.index} ({replica.device}): {payload}")
        return payload

    @property
    def size(self) -> int:
        """Number of replicas started."""
        return len(self._replicas)

    def answer_stream(
        self, items: Sequence[tuple[str, str]], *, seed: int | None, batch_size: int, raw: bool | None = None
    ) -> Iterator[AnsweredBatch]:
        """Deal the items out to the replicas and yield each batch of answers as it arrives, from any replica.

        Raises:
            UserError: a replica died or failed (after every answer that did arrive has been yielded).
        """
        prompts = dict(items)
        for batch in self._stream(items, seed, batch_size):
            self._engine_calls += 1
            yield self._cleaned(batch, prompts, raw)

    def _stream(self, items: Sequence[tuple[str, str]], seed: int | None, batch_size: int) -> Iterator[AnsweredBatch]:
        alive = [r for r in self._replicas if r.alive]
        if not alive:
            raise UserError("every engine replica has stopped; run the command again")
        busy: dict[Connection, _Replica] = {}
        asked: Counter[int] = Counter()
        answered: Counter[int] = Counter()
        for offset, replica in enumerate(alive):
            shard = list(items[offset :: len(alive)])
            if shard:
                replica.conn.send(("answer", shard, seed, batch_size))
                busy[replica.conn] = replica
                asked[replica.index] = len(shard)
        lost: list[_Replica] = []
        while busy:
            for conn in wait(list(busy)):
                replica = busy[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    replica.process.join(CLOSE_TIMEOUT_S)
                    replica.alive = False
                    lost.append(replica)
                    del busy[conn]
                    continue
                if message[0] == "batch":
                    answered[replica.index] += len(message[1])
                    yield AnsweredBatch(message[1], replica=replica.index, seconds=message[2], refused=message[3])
                elif message[0] == "done":
                    del busy[conn]
                else:
                    raise UserError(f"engine replica {replica.index} ({replica.device}): {message[1]}")
        if lost:
            missing = sum(asked[r.index] - answered[r.index] for r in lost)
            who = "; ".join(f"replica {r.index} ({r.device}) {_exit_reason(r.process)}" for r in lost)
            raise UserError(
                f"{who} before answering {missing} of its prompts; every answer that came back is in the answer "
                "cache: run the same command again to generate only the missing ones"
            )

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        # The one-prompt path (LlamaIndex's complete): still answered by a replica.
        answers: dict[str, str | None] = {}
        for batch in self._stream([(str(i), p) for i, p in enumerate(prompts)], sampling.seed, len(prompts)):
            answers.update(batch.answers)
        return [answers.get(str(i)) for i in range(len(prompts))]

    def close(self) -> None:
        """Ask every replica to release its engine, then stop any that does not."""
        _stop(self._replicas)
        self._replicas = []


def _stop(replicas: list[_Replica]) -> None:
    for replica in replicas:
        with contextlib.suppress(OSError, ValueError):
            replica.conn.send(("close",))
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    for replica in replicas:
        replica.process.join(max(0.0, deadline - time.monotonic()))
        if replica.process.is_alive():
            logger.warning("engine replica %d did not stop; terminating it", replica.index)
            replica.process.terminate()
            replica.process.join(5)
        replica.conn.close()


class ReplicaUsage:
    """Per-replica answer counts and engine time of one generate run (for the stats file)."""

    def __init__(self) -> None:
        self._answers: Counter[int] = Counter()
        self._calls: Counter[int] = Counter()
        self._seconds: defaultdict[int, float] = defaultdict(float)

    def add(self, batch: AnsweredBatch) -> None:
        """Count one batch of answers."""
        self._answers[batch.replica] += len(batch.answers)
        self._calls[batch.replica] += 1
        self._seconds[batch.replica] += batch.seconds

    def stats(self) -> list[dict[str, Any]]:
        """One row per replica that answered: answers, engine calls, engine seconds, answers per engine second."""
        return [
            {
                "replica": index,
                "answers": self._answers[index],
                "engine_calls": self._calls[index],
                "engine_seconds": round(self._seconds[index], 3),
                "answers_per_second": round(self._answers[index] / self._seconds[index], 3)
                if self._seconds[index] > 0
                else None,
            }
            for index in sorted(self._answers)
        ]
