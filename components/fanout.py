"""Fan-out work: one function over many independent jobs, on this machine's process pool (the
default) or on a Dask cluster (``resources.engine: dask``), results in job order.

Synthesis fans out over chunks of samples; with Dask, the benchmark also fans out over
generators and bootstrapping over batches of regenerations (on this machine those two stay in
the stage's process, where torch's threads already use every core).

With Dask and no ``resources.dask_address``, a ``LocalCluster`` of ``resources.workers``
single-threaded worker processes on 127.0.0.1 is started at the first call and stopped when the
process exits; with an address (``tcp://scheduler:8786``), the jobs go to that cluster, whose workers must have
subjectflow installed (the job functions are imported there, not pickled by value) and see the
paths the jobs write to (a shared file system). Every job derives its randomness from its own
inputs, so the output does not depend on the engine or the number of workers
(``tests/test_fanout.py`` checks byte-identical datasets).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

from .config import ResourcesParams


def resolve_workers(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)


def engine_workers(resources: ResourcesParams) -> int:
    """How many workers the fan-out runs on: the remote cluster's current count with a
    ``dask_address``, else ``resources.workers`` resolved."""
    if resources.engine == "dask" and resources.dask_address:
        from distributed import Client

        with Client(resources.dask_address) as client:
            return len(client.scheduler_info()["workers"])
    return resolve_workers(resources.workers)


def fan_out(fn: Callable, jobs: Iterable, resources: ResourcesParams) -> Iterator:
    """``fn(job)`` for every job, yielded in job order as they finish in that order."""
    jobs = list(jobs)
    workers = resolve_workers(resources.workers)
    if resources.engine == "dask":
        yield from _dask(fn, jobs, workers, resources.dask_address)
    elif workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, jobs)


@functools.cache
def local_client(workers: int):
    """A client of this process's LocalCluster of ``workers`` single-threaded processes on
    127.0.0.1, started once (a stage may fan out many times) and closed when the process exits."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    atexit.register(cluster.close)
    atexit.register(client.close)  # atexit runs last-registered first: the client, then the cluster
    return client


def _dask(fn: Callable, jobs: list, workers: int, address: str | None) -> Iterator:
    from distributed import Client

    with contextlib.nullcontext(local_client(workers)) if address is None else Client(address) as client:
        futures = client.map(fn, jobs, pure=False)
        for future in futures:
            yield future.result()
