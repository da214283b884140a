"""Data parallelism on a device mesh, with JAX's own sharding (``Mesh``, ``NamedSharding``): no engine of ours.

Inside ``with data_parallel("data=4"):`` every per-sample computation jaxmod runs is data-parallel: each training
step's batch (every objective, MODA's and MwT's pairwise losses included) and every dataset scan (activation
statistics, decomposition counts, evaluation, logits) is placed with its batch axis split over the mesh's ``data``
axis, and parameters and optimizer state are replicated. The jitted computations are unchanged: XLA partitions
them from the input shardings. A loss averaged over the batch, a class-wise sum of activation counts and MODA's
cosine-similarity matrix over the whole global batch (XLA gathers the ``[B, U]`` activations for the ``B x B``
product) are therefore the same as on one device, up to the order of floating-point sums.

Multi-host: call :func:`initialize_distributed` first in every process (it reads the coordinator, the process
count and id from arguments or the ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
environment); the mesh then spans every process's devices. Each process passes its own shard of the data
(:func:`process_shard`): a batch it places is its part of the global batch
(``jax.make_array_from_process_local_data``), so the global batch is the local one times the process count,
and replicated values are built from each process's identical copy. Orbax saves from every process (it
coordinates the writes); results are written by :func:`is_main_process` only.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
AXES = (DATA, "module")
_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("jaxmod_mesh", default=None)


def parse_mesh(spec: str | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh from ``"data=4"`` or ``"data=2,module=2"`` (``None`` or ``""``: every device on ``data``).

    ``ValueError`` naming the problem for unknown axes, sizes that are not positive integers, or a product that
    is not the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not spec:
        return Mesh(np.array(devices), (DATA,))
    sizes: dict[str, int] = {}
    for part in str(spec).split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in AXES:
            raise ValueError(f"mesh axis {name!r} is not one of {AXES} (mesh spec {spec!r})")
        if name in sizes:
            raise ValueError(f"mesh axis {name!r} given twice (mesh spec {spec!r})")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"mesh axis {name!r} needs a positive integer size, got {value!r}") from None
        if sizes[name] < 1:
            raise ValueError(f"mesh axis {name!r} needs a positive integer size, got {sizes[name]}")
    if DATA not in sizes:
        raise ValueError(f"the mesh needs a {DATA!r} axis (mesh spec {spec!r})")
    total = int(np.prod(list(sizes.values())))
    if total != len(devices):
        raise ValueError(f"mesh {spec!r} has {total} positions but there are {len(devices)} devices")
    return Mesh(np.array(devices).reshape(tuple(sizes.values())), tuple(sizes))


@contextlib.contextmanager
def data_parallel(mesh: Mesh | str | None = None) -> Iterator[Mesh]:
    """While active, jaxmod's training steps and dataset scans run data-parallel on ``mesh`` (a spec string is
    parsed with :func:`parse_mesh`)."""
    mesh = mesh if isinstance(mesh, Mesh) else parse_mesh(mesh)
    token = _MESH.set(mesh)
    try:
        yield mesh
    finally:
        _MESH.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh of the enclosing :func:`data_parallel`, or None (one device, jax's default placement)."""
    return _MESH.get()


def data_size(mesh: Mesh) -> int:
    return int(mesh.shape[DATA])


def shard_batch(x: Any, axis: int = 0) -> Any:
    """``x`` with axis ``axis`` split over the data axis of the current mesh (unchanged without a mesh)."""
    mesh = current_mesh()
    if mesh is None:
        return x
    n, parts = np.shape(x)[axis], data_size(mesh) // jax.process_count()
    if n % parts:
        raise ValueError(f"a batch of {n} does not split over {parts} devices on the data axis; use a batch size "
                         "that is a multiple of it")
    sharding = NamedSharding(mesh, P(*([None] * axis), DATA))
    if jax.process_count() > 1:  # x is this process's part of the global batch
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.device_put(x, sharding)


def replicate(tree: Any) -> Any:
    """Every leaf of ``tree`` replicated over the current mesh (unchanged without a mesh)."""
    mesh = current_mesh()
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P())
    if jax.process_count() > 1:  # every process holds the same value; each gives its devices their copy
        def global_copy(leaf: Any) -> Any:
            if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
                return leaf
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(global_copy, tree)
    return jax.device_put(tree, sharding)


def shard_modules(tree: Any, num_modules: int) -> Any:
    """Leaves whose leading axis is the ``num_modules`` modules split over the mesh's ``module`` axis (its
    ``data`` axis when it has no ``module`` axis: co-trained modules share each batch, so the modules are
    what to divide); every other leaf, and all of them when the split is uneven, replicated. Unchanged
    without a mesh."""
    mesh = current_mesh()
    if mesh is None:
        return tree
    axis = "module" if mesh.shape.get("module", 1) > 1 else DATA
    split = num_modules % mesh.shape[axis] == 0

    def place(leaf: Any) -> Any:
        if split and np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num_modules:
            return jax.device_put(leaf, NamedSharding(mesh, P(axis)))
        return replicate(leaf)

    return jax.tree.map(place, tree)


def local_batch_size(batch_size: int) -> int:
    """This process's part of a global batch of ``batch_size`` (all of it with one process)."""
    count = jax.process_count() if current_mesh() is not None else 1
    if batch_size % count:
        raise ValueError(f"a global batch of {batch_size} does not split over {count} processes")
    return batch_size // count


def global_data_identity(samples: int, digest: str) -> dict[str, Any]:
    """A run's data identity: this process's sample count and digest, or with several processes the total
    count and one digest over every process's (gathered, so that every process records the same)."""
    if jax.process_count() == 1:
        return {"samples": samples, "sha256": digest}
    from jax.experimental import multihost_utils  # noqa: PLC0415 - multi-process runs only

    local = np.frombuffer(bytes.fromhex(digest), np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(local))
    counts = np.asarray(multihost_utils.process_allgather(np.int64(samples)))
    return {"samples": int(counts.sum()), "sha256": hashlib.sha256(gathered.tobytes()).hexdigest()}


def process_shard(n: int) -> slice:
    """The samples ``[start, stop)`` of ``n`` that this process reads (equal parts; the remainder is dropped)."""
    per = n // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` from arguments or the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); nothing to do for a single process."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or (int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ
                                      else None)
    process_id = process_id if process_id is not None else (
        int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
    if coordinator is None or num_processes in (None, 1):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(coordinator, num_processes, process_id)


def is_main_process() -> bool:
    """Whether this process writes results (process 0)."""
    return jax.process_index() == 0
