"""LF collection on Ray actors (`lf.backend: ray`), and the check that Ray is installed.

`RayLF` is an `mfpg_robot.pairing.LFRunner`: `workers` actors, each holding its own batched
collector on the LF model (built in the actor, `lf.nthread` threads, the learner's torch
thread count). Per collection the learner puts the `LFModel` (frozen rollout policy, LF
critic, reward scaling) into the object store once and sends each chunk its rows: HF start
states, HF noise, the draws' key. The actor draws the rest from the keyed generators,
simulates the chunk and returns its samples. Chunk c runs on actor c mod workers and the
results come back in chunk order, so the samples are `LocalLF`'s, bit for bit, on machines
of one CPU kind (matrix products may round differently on another instruction set).

An actor that dies is restarted once and its chunks are retried: a chunk's samples do not
depend on where or how often it runs. The cluster is the one `ray.init()` finds (RAY_ADDRESS,
else a running local one, else a new local instance), or the one this process already joined.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from mfpg_robot.pairing import LFJob, LFModel, LFRows, simulate

#: How a user without Ray gets it.
INSTALL_HINT = "pip install 'mfpg-robot[ray]'"
#: Seconds the LF actors may take to start (they wait for free CPUs on the cluster).
START_TIMEOUT_S = 600.0


class RayNotInstalled(ValueError):
    """Ray was asked for but cannot be imported (a bad configuration, exit status 2)."""


def require_ray(what: str) -> ModuleType:
    """The `ray` module; RayNotInstalled naming `what` asked for it and how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalled(f"{what} needs Ray, which is not installed here: "
                              f"{INSTALL_HINT}") from None
    return ray


def connect(what: str, address: str | None = None, **init_args: Any) -> ModuleType:
    """The `ray` module, joined to a cluster: the one this process joined already, else
    `address` (None: what `ray.init()` finds)."""
    ray = require_ray(what)
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, **init_args)
    return ray


class LFWorker:
    """A Ray actor's state: one batched collector on the LF model."""

    def __init__(self, env_id: str, fidelity: str, n_envs: int, nthread: int,
                 torch_threads: int) -> None:
        import torch

        from sim.batched import BatchedCollector

        torch.set_num_threads(torch_threads)
        self.collector = BatchedCollector(env_id, fidelity=fidelity, n_envs=n_envs,
                                          nthread=nthread)

    def ready(self) -> bool:
        return True

    def simulate(self, job: LFJob, model: LFModel) -> LFRows:
        return simulate(self.collector, job, model)


class RayLF:
    """The chunks of an LF job on `workers` Ray actors (module docstring)."""

    def __init__(self, env_id: str, fidelity: str, n_envs: int, nthread: int, workers: int,
                 torch_threads: int) -> None:
        ray = connect("lf.backend: ray")
        self._ray = ray
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if workers * nthread > cpus:
            raise ValueError(
                f"lf.workers ({workers}) x lf.nthread ({nthread}) needs {workers * nthread} "
                f"CPUs, but the Ray cluster has {cpus:g}: lower lf.workers or lf.nthread, or "
                f"add nodes"
            )
        actor = ray.remote(num_cpus=nthread, max_restarts=1, max_task_retries=1)(LFWorker)
        self.actors = [actor.remote(env_id, fidelity, n_envs, nthread, torch_threads)
                       for _ in range(workers)]
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"the {workers} LF actors did not start within "
                               f"{START_TIMEOUT_S:.0f} s: the Ray cluster has no {nthread} free "
                               f"CPU(s) for each (other work holds them)") from None
        except ray.exceptions.RayError as err:
            self.close()
            raise RuntimeError(f"the LF actors could not start ({env_id}, {fidelity}): "
                               f"{err}") from None

    def run(self, job: LFJob, chunks: list[tuple[int, int]], model: LFModel) -> list[LFRows]:
        if model.start_sampler is not None:
            raise ValueError("a custom start sampler runs with LocalLF only (the actors draw "
                             "starts with their collector's own)")
        ray = self._ray
        ref = ray.put(model)
        n = len(self.actors)
        futures = [self.actors[c % n].simulate.remote(job.slice(lo, hi), ref)
                   for c, (lo, hi) in enumerate(chunks)]
        return ray.get(futures)

    def close(self) -> None:
        """Stop the actors (the cluster stays up)."""
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
