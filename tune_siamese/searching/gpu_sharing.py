"""Trials that share a GPU (--gpus-per-trial 0.5, 0.25, ...): whether NVIDIA MPS lets them run side by side.

Ray gives each trial a fraction of a GPU, but the trials are separate processes, and without NVIDIA's Multi-Process
Service (MPS) a GPU runs one process's kernels at a time: the trials take turns (time-slicing). With an MPS control
daemon running on the node, the CUDA driver of each process connects to it when CUDA starts, and one MPS server
runs the kernels of all of that user's processes together.

The daemon and its clients talk through named pipes and UNIX domain sockets in one folder, $CUDA_MPS_PIPE_DIRECTORY
(default /tmp/nvidia-mps); the daemon listens on the socket `control` there. A client that does not find it runs
without MPS, silently. So the trials see the daemon only when the Ray worker processes (started by `ray start`, or
by `ray.init` in this process for a local Ray) have the same CUDA_MPS_PIPE_DIRECTORY as the daemon.

To start it on a GPU node, as the user who runs Ray, before `ray start` (or before the search, for a local Ray):

    export CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-log
    nvidia-cuda-mps-control -d

with CUDA_VISIBLE_DEVICES unset, so that it serves every GPU of the node (Ray gives each trial its GPU through
CUDA_VISIBLE_DEVICES); stop it with `echo quit | nvidia-cuda-mps-control` (same CUDA_MPS_PIPE_DIRECTORY). More in
docs/cluster.md, "GPU sharing (MPS)".
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"  # NVIDIA's default when CUDA_MPS_PIPE_DIRECTORY is unset


def mps_pipe_directory() -> Path:
    """Where this process's CUDA driver would look for the MPS control daemon."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIRECTORY)


def mps_running() -> bool:
    """Whether an MPS control daemon serves mps_pipe_directory(): something listens on its `control` socket.

    The socket file alone proves nothing: it stays behind after `echo quit | nvidia-cuda-mps-control` (seen with
    driver 580). So connect to it, as the CUDA driver does: refused means no daemon. A connection that sends
    nothing costs the daemon one "Unable to accept connection" line in its control.log, nothing more. A named pipe
    `control` (NVIDIA's docs speak of pipes and sockets) counts as a daemon's."""
    control = mps_pipe_directory() / "control"
    try:
        mode = control.stat().st_mode
    except OSError:  # missing, or a folder this user may not read
        return False
    if stat.S_ISFIFO(mode):
        return True
    return stat.S_ISSOCK(mode) and _listening(control)


def _listening(path: Path) -> bool:
    for kind in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM):  # the daemon's is SEQPACKET (lsof); STREAM in case
        with socket.socket(socket.AF_UNIX, kind) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect(str(path))
                return True
            except OSError as exc:  # refused: a socket left behind; EPROTOTYPE: the other kind of socket
                if exc.errno != errno.EPROTOTYPE:
                    return False
    return False


def local_gpu_count() -> int:
    """GPUs this process sees (torch asks NVML first, so this does not start CUDA here)."""
    import torch

    return int(torch.cuda.device_count())


def fractional_gpu_warning(gpus_per_trial: float, local_gpus: int, mps: bool, on_cluster: bool) -> str | None:
    """The line the search prints at its start when trials share GPUs without MPS; None when there is nothing to say.

    `local_gpus` and `mps` describe this machine; on a cluster the trials run on other nodes, which the driver
    cannot look at, so the line says what each of them needs instead."""
    if not 0 < gpus_per_trial < 1:
        return None
    share = f"--gpus-per-trial {gpus_per_trial:g} shares each GPU between {round(1 / gpus_per_trial)} trials"
    if on_cluster:
        return (f"NOTE: {share}; they run side by side only on nodes where NVIDIA MPS runs: start "
                "`nvidia-cuda-mps-control -d` on every GPU node before `ray start` there "
                "(docs/cluster.md: GPU sharing (MPS))")
    if local_gpus == 0 or mps:  # no GPU here: Ray refuses the trials anyway; with MPS: nothing to warn about
        return None
    control = mps_pipe_directory() / "control"
    return (f"WARNING: {share}, but NVIDIA MPS is not running here (no daemon answers at {control}): the trials'"
            " kernels take turns on the GPU instead of running side by side; start it with "
            "`nvidia-cuda-mps-control -d` before the search (docs/cluster.md: GPU sharing (MPS))")


def sharing_warning(gpus_per_trial: float, on_cluster: bool) -> str | None:
    """fractional_gpu_warning for this machine; looks at the GPUs only when the trials share them."""
    if not 0 < gpus_per_trial < 1:
        return None
    if on_cluster:  # the trials' nodes are out of sight
        return fractional_gpu_warning(gpus_per_trial, 0, False, on_cluster=True)
    return fractional_gpu_warning(gpus_per_trial, local_gpu_count(), mps_running(), on_cluster=False)
