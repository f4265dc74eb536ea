"""Starting, finding and stopping the dispatcher's actors on Ray.

Actors are named in one namespace and got-or-created, so a second process
finds the running dispatcher instead of starting another. The API holds a
:class:`Dispatcher` to wake the scheduler and to tell workers about endpoint
changes; every call it makes is fire-and-forget, so the API never waits on Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import ray
from sqlalchemy.engine import make_url

from dispatcher import logs
from dispatcher.actors import DELIVERY_PREFIX, DeliveryActor, RouterActor, SchedulerActor, shard
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

NAMESPACE = "sentinmail"
SCHEDULER = "scheduler"
ROUTER = "router"


def delivery_actor_name(index: int) -> str:
    """The name of the ``index``-th delivery actor."""
    return f"{DELIVERY_PREFIX}{index}"


class ClusterNeedsPostgres(RuntimeError):
    """More than one Ray node shares a SQLite file: refused."""


def init_ray(settings: Settings) -> None:
    """Join the cluster at ``settings.ray_address``, or start a local Ray."""
    if ray.is_initialized():
        return
    logs.configure_from(settings)  # Ray's own lines included
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=False)
    else:
        # "local": a Ray of our own, even if `ray start` left a cluster on this machine.
        ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)


def ray_logs_dir() -> str | None:
    """Where this machine's Ray writes its logs, the actors' lines among them (None: unknown).

    Each actor's stderr is a ``worker-*.err`` file there. Ray has no public call
    for the folder: this reads its node object, and gives up quietly if that moved.
    """
    node: Any = getattr(ray._private.worker, "_global_node", None)
    try:
        return str(node.get_logs_dir_path())
    except Exception:
        return None


def check_database_fits_cluster(settings: Settings) -> None:
    """A SQLite file lives on one machine: a cluster of several nodes needs PostgreSQL."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    if len(nodes) > 1 and make_url(settings.database_url).get_backend_name() == "sqlite":
        raise ClusterNeedsPostgres(
            f"this Ray cluster has {len(nodes)} nodes but the database is SQLite "
            f"({settings.database_url}); actors on other nodes cannot share that file. "
            "Set SENTINMAIL_DATABASE_URL to a PostgreSQL URL (postgresql+psycopg://...)."
        )


@dataclass
class Dispatcher:
    """Handles on the dispatcher's actors, as the API and the CLI use them."""

    scheduler: Any
    router: Any
    workers: list[Any]
    _asked: dict[tuple[str, int], Any] = field(default_factory=dict, init=False, repr=False)
    """The last ``vitals`` call to each actor, by kind and index."""

    def wake(self) -> None:
        """New deliveries were committed: claim them now."""
        self.scheduler.wake.remote()

    def forget(self, endpoint_ids: list[str]) -> None:
        """These endpoints changed or went away: hand back their queued jobs."""
        self.router.forget.remote(endpoint_ids)

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """Whether each actor answers, with its counts and node."""
        refs = [self.scheduler.stats.remote()] + [w.stats.remote() for w in self.workers]
        try:
            scheduler, *workers = ray.get(refs, timeout=timeout)
        except Exception as exc:  # any actor down or slow
            return {"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"[:300]}
        return {"status": "ok", "scheduler": scheduler, "delivery_actors": workers}

    def vitals(self, timeout: float) -> dict[str, list[Any]]:
        """Each actor's numbers for ``/metrics``: ``stats`` (the router: its size), or None.

        None for an actor that did not answer within ``timeout``. Its call stays
        pending and is waited on again at the next scrape rather than sent anew:
        an actor that hangs, or is restarting, has one call queued, not one a scrape.
        """
        kinds = {"scheduler": [self.scheduler], "router": [self.router], "delivery": self.workers}
        refs: dict[tuple[str, int], Any] = {}
        for kind, actors in kinds.items():
            for index, actor in enumerate(actors):
                ref = self._asked.get((kind, index))
                if ref is None or ray.wait([ref], timeout=0)[0]:
                    ref = (actor.size if kind == "router" else actor.stats).remote()
                    self._asked[kind, index] = ref
                refs[kind, index] = ref
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        answered = set(ready)
        answers: dict[str, list[Any]] = {kind: [] for kind in kinds}
        for (kind, _), ref in refs.items():
            value = None
            if ref in answered:
                try:
                    value = ray.get(ref, timeout=0)
                except Exception:  # the actor died answering: absent, as a silent one
                    value = None
            answers[kind].append(value)
        return answers

    def breaker(self, origin: str, timeout: float) -> str | None:
        """The breaker state of ``origin`` in the delivery actor that owns it; None if no answer.

        The call is dropped after ``timeout`` (a stats request must not wait on
        a restarting actor); the actor answers it later to nobody.
        """
        if not self.workers:
            return None
        worker = self.workers[shard(origin, len(self.workers))]
        try:
            state: str = ray.get(worker.breaker.remote(origin), timeout=timeout)
        except Exception:  # slow, dead or restarting: the caller says "unknown"
            return None
        return state

    def stop(self) -> None:
        """Kill every actor of this dispatcher (their leases bring the work back)."""
        for actor in [self.scheduler, self.router, *self.workers]:
            ray.kill(actor, no_restart=True)


def start_dispatcher(
    settings: Settings, *, namespace: str = NAMESPACE, detached: bool = False
) -> Dispatcher:
    """Get or create the scheduler, the delivery actors and the router.

    Delivery actors are spread over the cluster's nodes. Starting again with a
    larger ``delivery_actors`` adds actors, and the router shards over them all.
    """
    check_database_fits_cluster(settings)
    cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[no-untyped-call]
    count = settings.delivery_actors or max(1, int(cpus))
    options: dict[str, Any] = {
        "namespace": namespace,
        "get_if_exists": True,
        "lifetime": "detached" if detached else None,
    }
    scheduler = SchedulerActor.options(name=SCHEDULER, **options).remote(  # type: ignore[attr-defined]
        settings, ROUTER, namespace
    )
    names = [delivery_actor_name(i) for i in range(count)]
    # Keep the handles: a non-detached actor lives as long as its creator's handles.
    # SPREAD places them over the nodes, and again over the survivors when one is lost;
    # it only spreads actors that ask for some resource, hence a sliver of a CPU.
    workers = [
        DeliveryActor.options(  # type: ignore[attr-defined]
            name=name, num_cpus=0.01, scheduling_strategy="SPREAD", **options
        ).remote(settings, SCHEDULER, namespace)
        for name in names
    ]
    router = RouterActor.options(name=ROUTER, **options).remote(namespace, settings)  # type: ignore[attr-defined]
    ray.get(router.refresh.remote())  # a running router learns of added actors
    dispatcher = Dispatcher(scheduler, router, workers)
    health = dispatcher.health(timeout=60)
    if health["status"] != "ok":
        raise RuntimeError(f"the dispatcher did not start: {health['error']}")
    return dispatcher


def connect_dispatcher(namespace: str = NAMESPACE) -> Dispatcher:
    """Find a running dispatcher by its actors' names; ValueError if there is none."""
    router = ray.get_actor(ROUTER, namespace=namespace)
    scheduler = ray.get_actor(SCHEDULER, namespace=namespace)
    names: list[str] = ray.get(router.worker_names.remote())
    workers = [ray.get_actor(name, namespace=namespace) for name in names]
    return Dispatcher(scheduler, router, workers)
