"""Keep the KV state of long prompt prefixes across unrelated requests (runs in the worker only).

``Llama.generate`` reuses only the prefix it shares with the KV cache as the previous request left
it. Home Assistant sends the same 2-4k token system prompt on every voice turn; one dashboard chat
in between used to throw that prefix away, and the next voice turn paid seconds of prompt
processing on a board. Before a prompt is evaluated the engine asks :func:`decide`:

* if the live KV holds a long prompt (``min_tokens`` or more) that the new prompt would overwrite,
  copy it out first (``llama_state_seq_get_data`` for sequence 0: only the used KV cells, no
  logits, about 23 KB per token on SmolLM2, 47 ms for 2k tokens);
* if a saved snapshot shares a longer prefix with the new prompt than the live KV does, put it
  back (28 ms for 2k tokens) and let ``Llama.generate``'s own prefix match evaluate the rest.

A request that continues the previous one (the common case without interleaving) matches the live
KV and costs nothing but a comparison. Snapshots live in this process, bounded in bytes by the
supervisor's plan and evicted least recently used first. A worker that ends cleanly (a swap, an
unload) writes the long ones to disk (:mod:`zoe_edge.worker.snapshots`); the next worker of the same
model knows them by their headers and reads one back only when a prompt wants it (``disk_*`` figures).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoe_edge.worker.llama_compat import Model
    from zoe_edge.worker.snapshots import Entry, SnapshotStore

log = logging.getLogger("zoe_edge.worker")

# a restore replaces the live KV: only worth it when it saves this many more tokens of evaluation
MIN_GAIN_TOKENS = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Decision:
    """What to do with the KV cache before a prompt is evaluated, and why."""

    save: bool  # snapshot the live KV before it is overwritten
    restore: int | None  # key of the snapshot to restore, if any
    live_shared: int  # prompt tokens the live KV already holds
    restore_shared: int  # prompt tokens the restored snapshot holds
    reason: str


def decide(
    live: Sequence[int],
    live_prompt_len: int,
    prompt: Sequence[int],
    snapshots: dict[int, Sequence[int]],
    min_tokens: int,
) -> Decision:
    """Pure policy: compare the prompt with the live KV and with each snapshot's tokens."""
    live_shared = common_prefix(live, prompt)
    best_key, best = None, 0
    for key, tokens in snapshots.items():
        shared = common_prefix(tokens, prompt)
        if shared > best:
            best_key, best = key, shared
    restore = best_key if best >= min_tokens and best >= live_shared + MIN_GAIN_TOKENS else None
    # the part of the live KV that came from a prompt and that this request would overwrite
    live_prompt = min(live_prompt_len, len(live))
    lost = live_prompt if restore is not None else live_prompt - live_shared
    covered = any(common_prefix(t, live) >= live_prompt for t in snapshots.values())
    save = live_prompt >= min_tokens and lost >= min_tokens and not covered
    parts = [f"live KV shares {live_shared} of {len(prompt)} prompt tokens"]
    if restore is not None:
        parts.append(f"snapshot shares {best}: restore it")
    elif best:
        parts.append(f"best snapshot shares {best}: not worth a restore")
    if save:
        parts.append(f"save the live {len(live)}-token KV first ({lost} prompt tokens would be lost)")
    return Decision(save, restore, live_shared, best if restore is not None else 0, "; ".join(parts))


@dataclass
class Snapshot:
    tokens: tuple[int, ...]  # what the KV cells hold, in order
    prompt_len: int  # how many of them came from a prompt (the rest were generated)
    data: ctypes.Array[ctypes.c_uint8]  # from Model.seq_state_save
    size: int


class PrefixCache:
    """Snapshots of sequence 0's KV cells for one model; not thread-safe (one request at a time)."""

    def __init__(self, llm: Model, budget_bytes: int, min_tokens: int) -> None:
        self.llm = llm
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self._next_key = 0
        self.live_prompt_len = 0
        self.restores = 0
        self.saves = 0
        self.evictions = 0
        self.failures = 0
        self.last_save_ms = 0.0
        self.last_restore_ms = 0.0
        self.store: SnapshotStore | None = None
        # snapshots a previous worker left on disk, under negative keys (the RAM ones count up from 0)
        self._disk: dict[int, Entry] = {}
        self.disk_restores = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @property
    def bytes_used(self) -> int:
        return sum(s.size for s in self._snapshots.values())

    def stats(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "bytes_used": self.bytes_used,
            "snapshots": len(self._snapshots),
            "min_tokens": self.min_tokens,
            "restores": self.restores,
            "saves": self.saves,
            "evictions": self.evictions,
            "failures": self.failures,
            "last_save_ms": round(self.last_save_ms, 3),
            "last_restore_ms": round(self.last_restore_ms, 3),
            "disk_snapshots": len(self._disk),
            "disk_restores": self.disk_restores,
            # files found corrupt, truncated or stale (another llama.cpp, a changed model file) and deleted
            "disk_discarded": self.store.deleted if self.store else 0,
        }

    def attach_store(self, store: SnapshotStore) -> None:
        """Know the snapshots on disk for this model (headers only; a payload is read when restored)."""
        self.store = store
        self._disk = {-1 - i: entry for i, entry in enumerate(store.scan())}
        if self._disk:
            log.info("prefix cache: %d snapshots on disk for this model", len(self._disk))

    def prepare(self, prompt: Sequence[int]) -> Decision | None:
        """Arrange the KV cache so that ``prompt`` finds its longest known prefix; before ``generate``."""
        if not self.enabled:
            return None
        live = self.llm.cached_tokens()
        known: dict[int, Sequence[int]] = {k: s.tokens for k, s in self._snapshots.items()}
        known.update((k, e.tokens) for k, e in self._disk.items())
        decision = decide(live, self.live_prompt_len, prompt, known, self.min_tokens)
        if decision.save:
            self._save(live, keep=decision.restore)
        if decision.restore is not None:
            self._restore(decision.restore)
        elif decision.save or decision.restore_shared:
            log.debug("prefix cache: %s", decision.reason)
        return decision

    def note_prompt(self, n_tokens: int) -> None:
        """The live KV now starts with a prompt of ``n_tokens`` (set after each request)."""
        self.live_prompt_len = n_tokens

    def _save(self, live: list[int], keep: int | None = None) -> None:
        """Snapshot the live KV; ``keep`` is the snapshot about to be restored, never evicted for this one."""
        started = time.perf_counter()
        # cells past the tracked tokens (left by a prompt aborted mid-batch) are not part of what we track
        self.llm.kv_remove_from(len(live))
        size = self.llm.seq_state_size()
        if not self._make_room(size, keep):
            log.info("prefix cache: no room for a %d-token snapshot (%d bytes); not kept", len(live), size)
            return
        data, written = self.llm.seq_state_save(size)
        if written <= 0:
            self.failures += 1
            log.warning("prefix cache: llama.cpp could not copy the KV state out")
            return
        key, self._next_key = self._next_key, self._next_key + 1
        # a snapshot whose tokens the new one extends adds nothing
        for old_key in [
            k for k, s in self._snapshots.items() if k != keep and common_prefix(s.tokens, live) == len(s.tokens)
        ]:
            del self._snapshots[old_key]
        self._snapshots[key] = Snapshot(tuple(live), min(self.live_prompt_len, len(live)), data, written)
        self.saves += 1
        self.last_save_ms = (time.perf_counter() - started) * 1000.0
        log.info(
            "prefix cache: saved %d tokens (%.1f MB) in %.0f ms; %d snapshots, %.1f of %.1f MB",
            len(live),
            written / 1e6,
            self.last_save_ms,
            len(self._snapshots),
            self.bytes_used / 1e6,
            self.budget_bytes / 1e6,
        )

    def _make_room(self, size: int, keep: int | None) -> bool:
        """Evict least recently used snapshots (never ``keep``) until ``size`` more bytes fit."""
        reserved = self._snapshots[keep].size if keep is not None and keep in self._snapshots else 0
        if size + reserved > self.budget_bytes:
            return False
        for key in list(self._snapshots):
            if self.bytes_used + size <= self.budget_bytes:
                break
            if key != keep:
                del self._snapshots[key]
                self.evictions += 1
        return True

    def _from_disk(self, key: int) -> Snapshot | None:
        """Read a disk snapshot and keep it in RAM too when it fits; ``None`` when the file is not intact."""
        entry = self._disk.pop(key)
        assert self.store is not None
        started = time.perf_counter()
        data = self.store.read(entry)
        if data is None:
            return None
        snap = Snapshot(entry.tokens, entry.prompt_len, data, entry.size)
        if self._make_room(snap.size, None):
            new_key, self._next_key = self._next_key, self._next_key + 1
            self._snapshots[new_key] = snap
        log.info(
            "prefix cache: read a %d-token snapshot (%.1f MB) from disk in %.0f ms",
            len(snap.tokens),
            snap.size / 1e6,
            (time.perf_counter() - started) * 1000.0,
        )
        return snap

    def _restore(self, key: int) -> None:
        from_disk = key < 0
        disk_path = self._disk[key].path if from_disk else None
        if from_disk:
            found = self._from_disk(key)
            if found is None:
                return  # the prompt is evaluated in full, as without a snapshot
            snap = found
            key = next((k for k, s in self._snapshots.items() if s is snap), key)
        else:
            snap = self._snapshots[key]
            self._snapshots.move_to_end(key)
        llm = self.llm
        started = time.perf_counter()
        llm.kv_remove_from(0)
        llm.forget_tokens()
        read = llm.seq_state_load(snap.data, snap.size)
        if read != snap.size:
            # the KV is in an unknown state: clear it, and the prompt is evaluated in full
            llm.kv_remove_from(0)
            self.failures += 1
            self._snapshots.pop(key, None)
            log.warning("prefix cache: llama.cpp rejected a snapshot (%d of %d bytes read)", read, snap.size)
            if disk_path is not None and self.store is not None:
                self.store.discard(disk_path, "llama.cpp rejected its state")
            return
        n = len(snap.tokens)
        llm.adopt_tokens(snap.tokens)  # the logits are stale: generate re-evaluates at least one token
        self.live_prompt_len = snap.prompt_len
        self.restores += 1
        self.disk_restores += from_disk
        self.last_restore_ms = (time.perf_counter() - started) * 1000.0
        log.info("prefix cache: restored %d tokens in %.0f ms", n, self.last_restore_ms)

    def persist(self, budget_s: float) -> int:
        """Write the live KV and the RAM snapshots of long prompts to the store, newest first; files written.

        Called once, as the worker ends. Stops after ``budget_s`` seconds (the daemon's grace before
        it kills us) and as soon as the store's bounds would evict what this call already wrote.
        """
        store = self.store
        if store is None or not self.enabled:
            return 0
        started = time.perf_counter()
        live = self.llm.cached_tokens()
        live_prompt = min(self.live_prompt_len, len(live))
        pending: list[Snapshot] = []
        if live_prompt >= self.min_tokens:
            # the live KV is usually the very prompt the next worker wants (the last voice turn)
            self.llm.kv_remove_from(len(live))
            data, written = self.llm.seq_state_save(self.llm.seq_state_size())
            if written > 0:
                pending.append(Snapshot(tuple(live), live_prompt, data, written))
        pending.extend(s for s in reversed(self._snapshots.values()) if s.prompt_len >= self.min_tokens)
        kept: set[Path] = set()
        for snap in pending:
            if time.perf_counter() - started > budget_s:
                log.warning("prefix cache: out of time; %d snapshots not written", len(pending) - len(kept))
                break
            path = store.write(snap.tokens, snap.prompt_len, snap.data, snap.size, kept)
            if path is not None:  # else too big for the bounds, or they would evict a newer one
                kept.add(path)
        if kept:
            log.info(
                "prefix cache: %d snapshots on disk for the next worker (%.0f ms)",
                len(kept),
                (time.perf_counter() - started) * 1000.0,
            )
        return len(kept)
