"""`tune-siamese finalize` as a command: how it stops on SIGTERM and what it says when its final model diverged
(final.finalize does the work; tests/final test it)."""
from __future__ import annotations

import argparse
import os
import signal
import time

from tune_siamese.app import finalize_command

ARGS = argparse.Namespace(experiment="EXP", final="seeds", final_size=3, address=None, connect_timeout=30.0, pick=None)


class RayAbort(Exception):
    """What Ray's own SIGTERM handler did to the driver (abort, exit 134), as an exception the test can see."""


def test_sigterm_during_finalize_is_a_clean_stop_with_exit_143(monkeypatch, capsys):
    """SIGTERM during finalize's retrain met the handler ray.init installs (exit 134). Now the command's own goes
    back in once Ray is up, and SIGTERM ends it like Ctrl-C: one line, exit 143, the handlers restored."""
    def ray_handler(signum, frame):
        raise RayAbort

    def retrain_then_sigterm(*args, on_connect=None, **kwargs):
        signal.signal(signal.SIGTERM, ray_handler)  # ray.init
        if on_connect is not None:
            on_connect()
        os.kill(os.getpid(), signal.SIGTERM)  # during the retrain
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop finalize")

    def outside(signum, frame):
        raise AssertionError("SIGTERM reached the handler from before the command")

    monkeypatch.setattr(finalize_command, "finalize", retrain_then_sigterm)
    before = signal.signal(signal.SIGTERM, outside)
    try:
        assert finalize_command.cmd_finalize(ARGS) == 143
        assert signal.getsignal(signal.SIGTERM) is outside
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tune-siamese finalize: interrupted (SIGTERM); its record and export are whole or absent (none "
                   "half-written): run it again"]


def test_a_diverged_final_model_is_one_line_and_exit_3(monkeypatch, capsys):
    monkeypatch.setattr(finalize_command, "finalize", lambda *args, **kwargs: {
        "final_diverged": "--final seeds (size 3): seed 1/3: training loss is nan at epoch 1",
        "record": "EXP/final-seeds3.json"})
    assert finalize_command.cmd_finalize(ARGS) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "the final model diverged (--final seeds (size 3): seed 1/3" in captured.err


def test_ctrl_c_is_exit_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr(finalize_command, "finalize", interrupted)
    assert finalize_command.cmd_finalize(ARGS) == 130
    assert "interrupted;" in capsys.readouterr().err
