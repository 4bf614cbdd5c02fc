"""Fractional GPUs and NVIDIA MPS: detecting the control daemon's socket, and the line the search prints."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune_siamese.app.console import print_start
from tune_siamese.searching import gpu_sharing
from tune_siamese.searching.gpu_sharing import fractional_gpu_warning, mps_pipe_directory, mps_running


def test_pipe_directory_default_and_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    assert mps_pipe_directory() == Path("/tmp/nvidia-mps")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert mps_pipe_directory() == tmp_path


def test_mps_running_needs_a_control_socket_or_pipe(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_running()  # empty folder
    (tmp_path / "control").write_text("")
    assert not mps_running()  # a regular file is not the daemon's
    (tmp_path / "control").unlink()
    os.mkfifo(tmp_path / "control")
    assert mps_running()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "missing"))
    assert not mps_running()


@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_STREAM])
def test_mps_running_connects_to_the_socket(monkeypatch, kind):
    # The daemon listens on a SEQPACKET socket `control`, and leaves the file behind when it quits. A short folder:
    # socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", folder)
        with socket.socket(socket.AF_UNIX, kind) as daemon:
            daemon.bind(os.path.join(folder, "control"))
            assert not mps_running()  # bound, not listening yet
            daemon.listen()
            assert mps_running()
        assert os.path.exists(os.path.join(folder, "control"))
        assert not mps_running()  # the socket file left behind by a daemon that quit


@pytest.mark.parametrize("gpus", [0.0, 1.0, 2.0])
def test_no_warning_without_sharing(gpus):
    for on_cluster in (False, True):
        assert fractional_gpu_warning(gpus, local_gpus=1, mps=False, on_cluster=on_cluster) is None


def test_warning_when_sharing_without_mps(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    line = fractional_gpu_warning(0.25, local_gpus=1, mps=False, on_cluster=False)
    assert line is not None and line.startswith("WARNING: --gpus-per-trial 0.25 shares each GPU between 4 trials")
    assert f"no daemon answers at {tmp_path / 'control'}" in line and "nvidia-cuda-mps-control -d" in line
    assert fractional_gpu_warning(0.25, local_gpus=1, mps=True, on_cluster=False) is None
    assert fractional_gpu_warning(0.5, local_gpus=0, mps=False, on_cluster=False) is None  # no GPU to share here


def test_note_on_a_cluster():
    line = fractional_gpu_warning(1 / 3, local_gpus=0, mps=False, on_cluster=True)
    assert line is not None and line.startswith("NOTE: --gpus-per-trial 0.333333 shares each GPU between 3 trials")
    assert "every GPU node before `ray start`" in line


def fake_settings(gpus_per_trial: float) -> SimpleNamespace:
    return SimpleNamespace(experiment_path="/tmp/x", num_samples=4, max_concurrent=4, study_storage="", mlflow="",
                           name="x", gpus_per_trial=gpus_per_trial, not_searched=[])


def test_print_start_warns_about_sharing_without_mps(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))  # empty: no daemon
    monkeypatch.setattr(gpu_sharing, "local_gpu_count", lambda: 1)
    print_start(fake_settings(0.25))
    assert "WARNING: --gpus-per-trial 0.25 shares each GPU between 4 trials" in capsys.readouterr().out
    os.mkfifo(tmp_path / "control")
    print_start(fake_settings(0.25))
    assert "WARNING" not in capsys.readouterr().out
    print_start(fake_settings(0.25), on_cluster=True)
    assert "NOTE: --gpus-per-trial 0.25" in capsys.readouterr().out


def test_print_start_does_not_look_at_gpus_for_whole_ones(monkeypatch, capsys):
    def count() -> int:
        raise AssertionError("GPUs counted although no trial shares one")

    monkeypatch.setattr(gpu_sharing, "local_gpu_count", count)
    print_start(fake_settings(1.0))
    print_start(fake_settings(0.0))
    assert "GPU" not in capsys.readouterr().out
