"""Joining Ray, and what a trial asks of it.

Where the search runs: `--address` if given, else the cluster named by RAY_ADDRESS (set by Ray Jobs and by
users), else a new local Ray. When this process joins a running cluster outside a Ray job, it ships its own
code (`tune_siamese`, `search_spaces`) to the workers as runtime_env py_modules; inside a Ray job the job's
runtime_env (`ray job submit --working-dir .`) does that. Either way the nodes need the dependencies
installed (see docs/cluster.md).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tune_siamese.core.errors import InputError

CONNECT_TIMEOUT_S = 30.0
# Ray sets this variable in the driver of a job submitted with `ray job submit`; its runtime_env then
# reaches every worker of the job.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def resolve_address(option: str | None) -> str:
    """--address, else $RAY_ADDRESS, else "local" (start a new Ray here); refuse addresses ray.init cannot join."""
    source, address = ("option --address", option) if option else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))
    address = (address or "").strip()
    if not address:
        return "local"
    if address.startswith("ray://"):
        raise InputError(f"{source}={address}: Ray Client addresses are not supported; submit the search as a Ray "
                         "job (ray job submit --working-dir . -- python run_search.py ...) or run it on a node of "
                         "the cluster with --address auto")
    if address.startswith(("http://", "https://")):
        raise InputError(f"{source}={address} is a dashboard (job submission) address; a search joins the "
                         "cluster's GCS address (HEAD_IP:6379) or 'auto'")
    host, _, port = address.rpartition(":")
    if address not in ("auto", "local") and (not host or not port.isdigit()):
        raise InputError(f"{source}={address} is not HOST:PORT, 'auto' or 'local'")
    return address


def _probe(address: str, source: str, timeout: float) -> None:
    """Fail within `timeout` on an address nothing listens at (ray.init would retry for minutes)."""
    host, _, port = address.rpartition(":")
    started = time.monotonic()
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InputError(f"{source}={address}: no Ray cluster answers there within {timeout:g} s ({reason})") from None
    # Something listens; the GCS speaks gRPC, and a port that never completes a gRPC handshake is not it.
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except grpc.FutureTimeoutError:
        raise InputError(f"{source}={address}: something listens there but it is not a Ray cluster (no gRPC "
                         f"answer within {timeout:g} s)") from None
    finally:
        channel.close()


def code_runtime_env() -> dict[str, Any] | None:
    """py_modules that carry this project's code to the workers; None inside a Ray job (its runtime_env does)."""
    if RAY_JOB_ENV in os.environ:
        return None
    # Found, not imported: this package's folder is ours, search_spaces's is a sibling package of it.
    spaces = importlib.util.find_spec("search_spaces")
    if spaces is None or spaces.origin is None:
        raise InputError("the search_spaces package is not importable: install the project (pip install -e .)")
    return {"py_modules": [str(Path(__file__).resolve().parent), os.path.dirname(spaces.origin)]}


def connecting_line(option: str | None) -> str:
    """What the console says while Ray starts or is joined."""
    import ray

    if ray.is_initialized():
        return "Using the Ray session already started in this process ..."
    address = resolve_address(option)
    return "Starting a local Ray ..." if address == "local" else f"Joining the Ray cluster at {address} ..."


def connect(option: str | None, timeout: float = CONNECT_TIMEOUT_S, dashboard: bool = False,
            ray_logs: bool = True) -> str:
    """Start or join Ray as described above; returns the address used ("local" for a new local Ray, "existing"
    for a Ray this process had started already). `ray_logs=False`: neither Ray's INFO lines nor the workers'
    output reach this process's console (the Python API's default; the progress display says what happens)."""
    import ray

    quiet: dict[str, Any] = {} if ray_logs else {"log_to_driver": False, "logging_level": logging.WARNING}
    if ray.is_initialized():
        return "existing"  # tests and notebooks may have started (or joined) Ray already
    address = resolve_address(option)
    source = "option --address" if option else "RAY_ADDRESS"
    if address == "local":
        # A Ray for this machine alone: Ray's single-machine mode binds the GCS, raylet and workers to
        # 127.0.0.1 instead of every interface. Ray reads it from the environment when imported, and its
        # processes inherit it.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
        # Ray enables token auth for a new local Ray and says so in a warning on every run; the behaviour is
        # right (and the ports are on 127.0.0.1 anyway), the line is noise. RAY_AUTH_MODE set by the user wins.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        kwargs: dict[str, Any] = {"include_dashboard": dashboard, "log_to_driver": True, **quiet}
        if dashboard:
            kwargs["dashboard_host"] = "127.0.0.1"
        # "local" always starts a new Ray here; None would silently join any Ray already running on this machine.
        ray.init(address="local", **kwargs)
        return address
    if address != "auto":
        _probe(address, source, timeout)
    try:
        ray.init(**{"address": address, "runtime_env": code_runtime_env(), "log_to_driver": True, **quiet})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise InputError(f"{source}={address}: could not join the Ray cluster ({first_line[:300]})") from None
    print(f"Joined the Ray cluster at {address}: {_describe_nodes()}", file=sys.stderr, flush=True)
    return address


def disconnect() -> None:
    """Leave the Ray that connect started or joined: a local one stops, a cluster goes on without this driver."""
    import ray

    ray.shutdown()


def _describe_nodes() -> str:
    alive = alive_nodes()
    cpus = sum(node.get("CPU", 0.0) for node in alive)
    gpus = sum(node.get("GPU", 0.0) for node in alive)
    return f"{len(alive)} node(s), {cpus:g} CPUs, {gpus:g} GPUs"


# ------------------------------------------------------------------------------------------------------
# What one trial needs, against what the nodes have (or an autoscaler can add)

def _fits(resources: dict[str, float], need: dict[str, float]) -> int:
    """How many trials of `need` one node of `resources` holds at once."""
    counts = [int(min(resources.get(key, 0.0) / amount, 1e6) + 1e-9) for key, amount in need.items() if amount > 0]
    return min(counts) if counts else 0


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each node that is up."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def fit_resources(settings: Any, wait_seconds: float = 0.0) -> Any:
    """Refuse trials no node can ever hold; default the concurrency to what the cluster fits.

    A node type of the cluster's autoscaler that fits a trial (when its config is readable here) counts as
    nodes the trials may wait for. Otherwise, with `wait_seconds`, ask any autoscaler for one node that fits
    (ray.autoscaler.sdk.request_resources) and wait that long for one to join, added by it or by hand."""
    need = {"CPU": float(settings.cpus_per_trial), "GPU": float(settings.gpus_per_trial)}
    node_types = autoscaler_node_types()
    nodes = alive_nodes()
    if not any(_fits(node, need) for node in nodes) and node_types is None and wait_seconds > 0:
        nodes = _wait_for_a_node(need, wait_seconds)
    fits_now = sum(_fits(node, need) for node in nodes)
    can_add = sum(_fits(resources, need) * count for resources, count in (node_types or []))
    if not fits_now and not can_add:
        raise InputError(_refusal(settings, nodes, node_types, wait_seconds))
    if not fits_now:
        print(f"No node fits a trial ({_describe_need(need)}) yet; the autoscaler can add nodes for up to "
              f"{can_add} at once, and trials wait for them.", file=sys.stderr, flush=True)
    if settings.max_concurrent:
        return settings
    return dataclasses.replace(settings, max_concurrent=max(1, min(fits_now + can_add, settings.num_samples)))


def _wait_for_a_node(need: dict[str, float], seconds: float) -> list[dict[str, float]]:
    from ray.autoscaler.sdk import request_resources

    bundle = {key: amount for key, amount in need.items() if amount > 0}
    print(f"No node fits a trial ({_describe_need(need)}); waiting up to {seconds:g} s for one "
          "(--wait-for-resources).", file=sys.stderr, flush=True)
    request_resources(bundles=[bundle])  # demand an autoscaler can act on before any trial is pending
    deadline = time.monotonic() + seconds
    try:
        nodes = alive_nodes()
        while not any(_fits(node, need) for node in nodes) and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = alive_nodes()
        return nodes
    finally:
        request_resources(bundles=[])  # from here on the pending trials are the demand


def _describe_need(need: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {key}" for key, amount in need.items() if amount > 0)


def _refusal(settings: Any, nodes: list[dict[str, float]], node_types: Any, wait_seconds: float) -> str:
    cpus = sum(node.get("CPU", 0.0) for node in nodes)
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    option, amount, unit = (("--gpus-per-trial", settings.gpus_per_trial, "GPU(s)")
                            if settings.gpus_per_trial and not any(node.get("GPU", 0.0) >= settings.gpus_per_trial
                                                                   for node in nodes)
                            else ("--cpus-per-trial", settings.cpus_per_trial, "CPUs"))
    where = (f"the cluster has {cpus:g} CPUs and {gpus:g} GPU(s) on {len(nodes)} node(s)" if unit == "CPUs"
             else f"the cluster has {gpus:g} GPU(s) and {cpus:g} CPUs on {len(nodes)} node(s)")
    if node_types is not None:
        return f"option {option}={amount:g}: no node and no node type of the autoscaler fits one trial ({where})"
    waited = f" after waiting {wait_seconds:g} s" if wait_seconds else " (--wait-for-resources lets trials wait)"
    return f"option {option}={amount:g} but no node fits one trial{waited}; {where}"


# The cluster launcher's copy of the cluster YAML on the head node (Ray Tune checks the same file).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
MONITOR_SCRIPTS = ("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")


def autoscaling_config_path(gcs_port: str) -> Path | None:
    """The autoscaler's cluster config, when this process runs on the head node: the `--autoscaling-config`
    of the cluster's monitor process (Ray 2.60 gives a driver no API for the node types), else the cluster
    launcher's bootstrap file. None: a fixed cluster, or one whose autoscaler is elsewhere (KubeRay)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(arg.endswith(MONITOR_SCRIPTS) for arg in args):
            continue
        if not any(arg.startswith("--gcs-address=") and arg.rpartition(":")[2] == gcs_port for arg in args):
            continue
        configs = [arg.split("=", 1)[1] for arg in args if arg.startswith("--autoscaling-config=")]
        return Path(configs[0]) if configs else None  # a monitor without config cannot add nodes
    bootstrap = Path(BOOTSTRAP_CONFIG).expanduser()
    return bootstrap if bootstrap.is_file() else None


def autoscaler_node_types() -> list[tuple[dict[str, float], int]] | None:
    """(resources, max workers) of each node type the cluster's autoscaler may launch; None: no autoscaler
    known. A type that declares no resources (the launcher fills them in from the instance type) is taken
    as one that fits a trial."""
    import ray
    import yaml

    path = autoscaling_config_path(ray.get_runtime_context().gcs_address.rpartition(":")[2])
    if path is None:
        return None
    try:
        config = yaml.safe_load(path.read_text())
        types = config["available_node_types"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    found = []
    for spec in types.values():
        count = int(spec.get("max_workers", 0) or 0)
        if count > 0:
            resources = {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
            found.append((resources or {"CPU": float("inf"), "GPU": float("inf")}, count))
    return found


def ray_console_environment() -> None:
    """Ray's console as a search shows it; each command sets it once, before Ray starts (Ray reads these when it
    prints)."""
    # Tune's CLIReporter (live_table.live_table), also the one a restored run's saved config holds; Ray's newer
    # console prints each trial's whole config and cannot be narrowed to columns.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Tune warns whenever per-epoch checkpoints force an experiment snapshot; locally a snapshot takes ~10 ms.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not sys.stderr.isatty():  # colour codes for the "(task pid=...)" prefix are noise in a log file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
