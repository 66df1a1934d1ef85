"""Multi-process runs: start JAX's distributed runtime from explicit settings, environment
variables, or the cluster's own environment (SLURM, Open MPI, TPU pods, Kubernetes).

JAX runs one Python process per host (or per accelerator); every process runs the same program
on global arrays. :func:`process_settings` reads the three settings of such a run — the
coordinator's ``HOST:PORT``, the number of processes and this process's id — from arguments,
else from the environment variables ``JAX_COORDINATOR_ADDRESS`` (which
``jax.distributed.initialize`` reads itself too), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``,
and checks them before anything connects; :func:`initialize_distributed` starts the runtime. With
``detect=True`` the settings not given are JAX's own cluster detection's
(``jax.distributed.initialize()`` without arguments). Nothing given and no detection: a
single-process run, and nothing is started.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DistributedError", "ProcessSettings", "initialize_distributed", "process_settings",
           "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # jax.distributed.initialize reads it as well
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_ENV = {"coordinator": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
        "process_id": ENV_PROCESS_ID}


class DistributedError(RuntimeError):
    """The distributed runtime did not start (no cluster detected, the coordinator did not
    answer in time, or JAX was already in use): the message says which and what to do."""


@dataclass(frozen=True)
class ProcessSettings:
    """The settings of a multi-process run, checked (see :func:`process_settings`).

    ``None`` fields are left to JAX's cluster detection (only when ``detect``).
    """

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    detect: bool = False


def _name(key: str, names: Mapping[str, str] | None) -> str:
    return (names or {}).get(key, key)


def _integer(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{what}: expected an integer >= {minimum}, got {value!r}") from None
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_coordinator(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected HOST:PORT, got {value!r}")
    host, sep, port = value.strip().rpartition(":")
    example = "e.g. 10.0.0.1:8476 (the address of process 0 and a free port)"
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what}: expected HOST:PORT with a port in 1..65535, {example}; "
                         f"got {value!r}")
    return value.strip()


def process_settings(coordinator: str | None = None, num_processes: int | str | None = None,
                     process_id: int | str | None = None, *, detect: bool = False,
                     environ: Mapping[str, str] | None = None,
                     names: Mapping[str, str] | None = None) -> ProcessSettings | None:
    """The checked settings of a multi-process run, or None for a single-process one.

    Each setting is the argument when given, else its environment variable
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; empty counts as
    unset). Without ``detect`` either none of the three is set (None: one process) or all
    three are. ``ValueError`` names the setting (by ``names``, else the argument's name, or
    the environment variable it came from) when one is malformed or missing, or the process
    id is not below the number of processes — before anything connects.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordinator service (every process gives
        the same).
      num_processes: how many processes the run has, an integer >= 1 (a string is parsed).
      process_id: this process's id in ``0 .. num_processes - 1``.
      detect: leave the settings not given to JAX's cluster detection (SLURM, Open MPI,
        TPU pods, Kubernetes); a run with ``detect`` is always multi-process.
      environ: the environment to read (default ``os.environ``).
      names: how errors call the settings, e.g. ``{"coordinator": "--coordinator"}`` for a
        command line (keys: ``coordinator``, ``num_processes``, ``process_id``, ``detect``).

    Returns:
      The checked settings (a :class:`ProcessSettings`), or None when nothing asks for
        several processes.

    Examples:
        >>> from mhe_jax.train.distributed import process_settings
        >>> process_settings(environ={}) is None  # nothing set: one process
        True
        >>> process_settings("127.0.0.1:8476", 2, "1", environ={})
        ProcessSettings(coordinator='127.0.0.1:8476', num_processes=2, process_id=1, detect=False)
        >>> process_settings(environ={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476",
        ...                           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
        ProcessSettings(coordinator='10.0.0.1:8476', num_processes=4, process_id=3, detect=False)
        >>> process_settings("127.0.0.1:8476", 2, 2, environ={},
        ...                  names={"process_id": "--process-id"})
        Traceback (most recent call last):
        ...
        ValueError: --process-id 2: must be below the number of processes, 2 (ids 0..1)
    """
    env = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    raw: dict[str, tuple[object, str]] = {}  # setting -> (value, where it came from)
    for key, value in given.items():
        if value is not None and not (isinstance(value, str) and not value.strip()):
            raw[key] = (value, _name(key, names))
        elif env.get(_ENV[key], "").strip():
            raw[key] = (env[_ENV[key]], f"{_ENV[key]} (environment)")
    if not raw and not detect:
        return None

    def what(key: str) -> str:
        return f"{raw[key][1]} {raw[key][0]!r}"

    coord = _check_coordinator(raw["coordinator"][0], what("coordinator")) \
        if "coordinator" in raw else None
    n = _integer(raw["num_processes"][0], what("num_processes"), 1) \
        if "num_processes" in raw else None
    i = _integer(raw["process_id"][0], what("process_id"), 0) if "process_id" in raw else None
    if not detect:
        missing = [k for k in _ENV if k not in raw]
        if missing:
            have = ", ".join(raw[k][1] for k in _ENV if k in raw)
            need = " and ".join(f"{_name(k, names)} (or {_ENV[k]})" for k in missing)
            raise ValueError(
                f"{have} given, but not {need}: a multi-process run needs all three "
                f"settings, or {_name('detect', names)} to take the missing ones from the "
                "cluster (SLURM, Open MPI, TPU pod, Kubernetes)")
    if n is not None and i is not None and i >= n:
        raise ValueError(f"{raw['process_id'][1]} {i}: must be below the number of "
                         f"processes, {n} (ids 0..{n - 1})")
    return ProcessSettings(coord, n, i, bool(detect))


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pin_cpu_collectives_to_loopback() -> None:
    """gloo (JAX's CPU collectives) listens on the address of this host's name, which in some
    containers does not resolve or is not reachable; with a loopback coordinator every process
    is on this host, so bind it to 127.0.0.1. Best effort: a JAX without the hook is left
    alone."""
    try:
        from jax._src import xla_bridge

        lib = getattr(xla_bridge, "_jax")  # noqa: B009 - the extension module xla_bridge calls
        make = lib.make_gloo_tcp_collectives
    except (ImportError, AttributeError):  # pragma: no cover - another jaxlib
        return
    if not getattr(make, "_mhe_jax_loopback", False):
        pinned = functools.partial(make, hostname="127.0.0.1")
        setattr(pinned, "_mhe_jax_loopback", True)  # noqa: B010
        lib.make_gloo_tcp_collectives = pinned


def initialize_distributed(settings: ProcessSettings | None, *,
                           initialization_timeout: int = 300,
                           heartbeat_timeout_seconds: int = 100,
                           names: Mapping[str, str] | None = None) -> bool:
    """Start JAX's distributed runtime for ``settings`` (None: one process, nothing to do).

    Call it before anything else uses JAX (the first computation, ``jax.devices()``), in
    every process, with the same coordinator and number of processes. With a loopback
    coordinator (``127.0.0.1``, ``localhost``, ``::1``) all processes are on this host, and
    the CPU collectives (gloo) are bound to 127.0.0.1 too.

    Args:
      settings: from :func:`process_settings`.
      initialization_timeout: seconds to wait for every process to connect.
      heartbeat_timeout_seconds: a process silent for this long is taken as dead, and the
        runtime stops the others with an error naming it.
      names: how errors call the settings (as for :func:`process_settings`).

    Returns:
      True when the runtime was started (a multi-process run), False for None.

    Raises:
      DistributedError: no cluster detected (with ``detect`` and settings missing), the
        processes did not all connect in time, or JAX was already initialized.

    Examples:
        >>> from mhe_jax.train.distributed import initialize_distributed, process_settings
        >>> initialize_distributed(process_settings(environ={}))  # a single-process run
        False
    """
    if settings is None:
        return False
    import jax

    if settings.coordinator is not None and _is_loopback(
            settings.coordinator.rpartition(":")[0]):
        _pin_cpu_collectives_to_loopback()
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator, num_processes=settings.num_processes,
            process_id=settings.process_id, initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    except ValueError as e:
        if settings.detect and None in (settings.coordinator, settings.num_processes,
                                        settings.process_id):
            raise DistributedError(
                "JAX detected no cluster environment (SLURM, Open MPI, TPU pod, Kubernetes) "
                f"to take the missing settings from ({' '.join(str(e).split())}): give "
                + ", ".join(_name(k, names) for k in _ENV) + f" (or {', '.join(_ENV.values())})"
            ) from e
        raise DistributedError(" ".join(str(e).split())) from e
    except RuntimeError as e:  # already initialized, JAX already in use, connection timeout
        text = " ".join(str(e).split())
        hint = ""
        if "DEADLINE_EXCEEDED" in text or "timed out" in text.lower():
            hint = (f" — not every process connected to {settings.coordinator or 'the '}"
                    f"{'' if settings.coordinator else 'coordinator'} within "
                    f"{initialization_timeout} s: start all {settings.num_processes or ''} "
                    "processes with the same coordinator and a free port")
        raise DistributedError(f"{text[:500]}{hint}") from e
    return True
