"""Model files from the network: resumable, verified downloads of the registry's ``url`` models.

The API for a front (Ollama's ``/api/pull``) and the CLI::

    async with contextlib.aclosing(pull_model(name, registry, registry_dir, state_dir)) as events:
        async for event in events:
            send(event.as_ollama())  # the last one: status "success", event.result.fit / .plan
"""

from __future__ import annotations

from zoe_edge.store.errors import (
    DigestMismatch,
    DownloadFailed,
    DownloadInterrupted,
    NotEnoughSpace,
    NotGGUF,
    NotPullable,
    PullError,
)
from zoe_edge.store.events import PullProgress, PullResult
from zoe_edge.store.models import fit_report, missing_downloads, pull_model, resolve_model
from zoe_edge.store.pull import partial_path, pull_file

__all__ = [
    "DigestMismatch",
    "DownloadFailed",
    "DownloadInterrupted",
    "NotEnoughSpace",
    "NotGGUF",
    "NotPullable",
    "PullError",
    "PullProgress",
    "PullResult",
    "fit_report",
    "missing_downloads",
    "partial_path",
    "pull_file",
    "pull_model",
    "resolve_model",
]
