"""An experiment folder's files as Python values: no tables yet (experiment.py builds those), no Ray cluster.

Tune's own files are the source of truth: `experiment_state-*.json` for each trial's status and folder,
each trial's `result.json` for its epochs, `params.json` for its config; ours add `search_settings.json`
(the space and ASHA settings) and `final.json` (the retrained model's test scores).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import trial_id_of


class ExperimentFiles:
    """A local folder or a storage URI (s3://..., gs://...) read through pyarrow.fs, as Ray's storage is."""

    def __init__(self, path: str | Path):
        self.fs, self.root = storage.filesystem(path)
        self.display = storage.resolve(path)

    def kind(self, rel: str = "") -> pyarrow.fs.FileType:
        return self.fs.get_file_info(self._at(rel)).type

    def text(self, rel: str) -> str | None:
        if self.kind(rel) != pyarrow.fs.FileType.File:
            return None
        with self.fs.open_input_stream(self._at(rel)) as stream:
            return stream.read().decode()

    def json(self, rel: str) -> Any:
        text = self.text(rel)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg})", f"{self.display}/{rel}", exc.lineno) from None

    def entries(self, rel: str = "") -> dict[str, pyarrow.fs.FileType]:
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._at(rel), allow_not_found=True))
        return {info.base_name: info.type for info in infos}

    def _at(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root


def result_rows(text: str | None) -> list[dict[str, Any]]:
    """result.json's lines; a line still being written by a running trial is skipped."""
    rows = []
    for line in (text or "").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def with_trial_ids(summary: Any) -> dict[str, Any] | None:
    """final.json with every trial named by its id, also in a record written when it said the folder's name."""
    if not isinstance(summary, dict):
        return None
    if isinstance(summary.get("best_trial"), str):
        summary["best_trial"] = trial_id_of(summary["best_trial"])
    for member in (summary.get("ensemble") or {}).get("members", []):
        member["trial_id"] = trial_id_of(member["trial_id"])
    finalists = summary.get("finalists")
    if isinstance(finalists, dict):
        for entry in finalists.get("trials", []):
            entry["trial_id"] = trial_id_of(entry["trial_id"])
            entry["runs"] = [run if run is None else trial_id_of(run) for run in entry.get("runs", [])]
        for key in ("winner", "threshold_run"):
            if isinstance(finalists.get(key), str):
                finalists[key] = trial_id_of(finalists[key])
    return summary


def trial_records(folder: ExperimentFiles) -> dict[str, dict[str, Any]]:
    """trial id -> {folder, tune_status, config, params}: from Tune's newest state file, then any trial folder
    the state file does not list yet (it is written every few seconds while a search runs)."""
    records: dict[str, dict[str, Any]] = {}
    entries = folder.entries()
    states = sorted(n for n, t in entries.items()
                    if n.startswith("experiment_state-") and n.endswith(".json") and t == pyarrow.fs.FileType.File)
    state = folder.json(states[-1]) if states else None  # the timestamp in the name sorts as text
    for trial_json, _runtime_json in (state or {}).get("trial_data", []):
        trial = json.loads(trial_json)
        if trial.get("relative_logdir") is not None:  # read below as a folder of the experiment, nowhere else
            storage.check_name(str(trial["relative_logdir"]),
                               f"{folder.display}/{states[-1]}: trial {trial.get('trial_id')}: relative_logdir")
        config = trial.get("config")
        records[str(trial["trial_id"])] = {
            "folder": trial.get("relative_logdir"), "tune_status": trial.get("status"),
            "config": config if isinstance(config, dict) else {},
            "params": trial.get("evaluated_params") if isinstance(trial.get("evaluated_params"), dict) else {}}
    known = {r["folder"] for r in records.values()}
    for name, kind in sorted(entries.items()):
        if kind == pyarrow.fs.FileType.Directory and name not in known and (
                folder.kind(f"{name}/result.json") == pyarrow.fs.FileType.File):
            rows = result_rows(folder.text(f"{name}/result.json"))
            trial_id = str(rows[0]["trial_id"]) if rows and "trial_id" in rows[0] else name.removeprefix("trial_")
            records[trial_id] = {"folder": name, "tune_status": None, "config": {}, "params": {}}
    return records
