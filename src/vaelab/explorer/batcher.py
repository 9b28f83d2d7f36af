"""Micro-batching for the decode endpoint: one worker thread, one forward pass per batch.

Requests that arrive while the model is busy wait in a queue; the worker then takes all of them
(up to `max_batch`) and decodes them in a single forward pass in inference mode. An idle server
adds no waiting time (there is no fixed batching window), and a loaded one pays the per-call
overhead of PyTorch once per batch instead of once per request.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional

import torch

# (B, D) latents, (B,) labels or None -> one result per row (here: PNG bytes).
BatchFn = Callable[[torch.Tensor, Optional[torch.Tensor]], list]


@dataclass
class _Job:
    z: Sequence[float]  # (D,) values
    label: Optional[int]
    future: Future = field(default_factory=Future)


_STOP = object()


class DecodeBatcher:
    """Runs `fn` over batches of queued latent vectors on a daemon worker thread."""

    def __init__(self, fn: BatchFn, max_batch: int = 64) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="vaelab-decode", daemon=True)
        self._thread.start()
        self.batches = 0  # counters, read by tests and the benchmark
        self.items = 0

    def submit(self, z: Sequence[float], label: Optional[int] = None) -> Future:
        """Queue one latent vector (D values); the future resolves to fn's result for it."""
        if not self._thread.is_alive():
            raise RuntimeError("the decode worker has stopped")
        job = _Job(z, label)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the jobs already queued."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs, stop = [first], False
            # Take whatever else is already waiting, without waiting for more.
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                jobs.append(job)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        # A future cancelled by its caller (client went away) is dropped before the work starts.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        # Rows with and without a label cannot share a call; in practice a model is either
        # conditional (every row has one) or not (none has), so this is one group.
        for labelled in (False, True):
            group = [job for job in jobs if (job.label is not None) == labelled]
            if not group:
                continue
            z = torch.tensor([list(job.z) for job in group], dtype=torch.float32)  # (B, D)
            labels = torch.tensor([job.label for job in group]) if labelled else None
            try:
                with torch.inference_mode():
                    results = self.fn(z, labels)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for job in group:
                    job.future.set_exception(exc)
                continue
            for job, result in zip(group, results):
                job.future.set_result(result)
            self.batches += 1
            self.items += len(group)
