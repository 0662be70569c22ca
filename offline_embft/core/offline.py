"""The no-network promise, set before any heavy import.

Every entry point (the CLI, the scripts, the package itself on import) calls :func:`enable` before transformers,
sentence-transformers, vLLM or ModelScope are imported, because those libraries read these variables once at import
time. Only ``offline-embft download`` (run on a connected machine) lifts the hub variables, and only for itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

# Variables that make every library we use stay off the network (or at least stop phoning home).
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "MODELSCOPE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
    "WANDB_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "GRADIO_ANALYTICS_ENABLED": "False",
    # Ray (generate.ray_address): no usage report to anyscale; the dashboard is switched off where Ray starts.
    "RAY_USAGE_STATS_ENABLED": "0",
}

# Variables the download command lifts (it is the one stage meant for a connected machine).
HUB_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "MODELSCOPE_OFFLINE")

# Escape hatch for users who really do want network access at run time (documented in the README).
ALLOW_NETWORK_VAR = "OFFLINE_EMBFT_ALLOW_NETWORK"


def enable() -> None:
    """Set the offline environment unless the user explicitly allowed the network."""
    if os.environ.get(ALLOW_NETWORK_VAR, "") == "1":
        return
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (a string) or unset (None) environment variables for the block, then put each back as it was.

    A child process copies the environment when it starts, and a library reads it when imported: both see the
    block's values.
    """
    saved = {key: os.environ.get(key) for key in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(saved)


def _apply(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def hub_allowed() -> contextlib.AbstractContextManager[None]:
    """The hub variables lifted for one download (a connected machine), then put back as they were."""
    return environment(dict.fromkeys(HUB_VARS))


def status() -> dict[str, tuple[str | None, bool]]:
    """Each offline variable with its current value and whether it matches the offline setting."""
    return {key: (os.environ.get(key), os.environ.get(key) == value) for key, value in OFFLINE_ENV.items()}
