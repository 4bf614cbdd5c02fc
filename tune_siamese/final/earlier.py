"""A grown search's earlier final model (--resume EXP --num-samples N): before the final stage of the grown search
writes final.json and export/, the ones the smaller search wrote move aside, named by its trial count: final.json
of 32 trials becomes final-n32.json, and export/, export-ensemble/ and finalists/ become export-n32/,
export-ensemble-n32/ and finalists-n32/ (the record names them there). A resume of a search that has finished
and not grown writes them again, as it always did.
"""
from __future__ import annotations

import json

from tune_siamese.core import storage
from tune_siamese.core.names import FINAL_FILE
from tune_siamese.final.finalists import FINALISTS_DIR

# The folders a search's final stage writes into the experiment (finish.py, finalists.py)
FINAL_FOLDERS = ("export", "export-ensemble", FINALISTS_DIR)


def earlier_name(name: str, trials: int) -> str:
    """final-n32.json for final.json, export-n32 for export."""
    stem, suffix = (name.removesuffix(".json"), ".json") if name.endswith(".json") else (name, "")
    return f"{stem}-n{trials}{suffix}"


def keep_earlier_final(experiment: str, trials: int) -> str | None:
    """Move the final record (and its folders) of a search of fewer than `trials` trials aside; returns where the
    record went, or None when there is none of fewer trials.

    Each step can be cut short and run again: the record is first rewritten in place to name the folders where
    they go (a rewrite of one already rewritten changes nothing), then each folder still in place moves, then the
    record moves last, so until it has moved a rerun finds it and finishes the job."""
    record_path = storage.child(experiment, FINAL_FILE)
    try:
        record = json.loads(storage.read_text(record_path) or "null")
    except json.JSONDecodeError:
        return None  # not a record: the new final stage writes over it, as over any unreadable one
    earlier = record.get("trials") if isinstance(record, dict) else None
    if not isinstance(earlier, int) or earlier >= trials:
        return None
    renames = {name: earlier_name(name, earlier) for name in FINAL_FOLDERS}
    rewritten = storage.record_renamed(record, experiment, renames)
    storage.write_text(record_path, json.dumps(rewritten, indent=2) + "\n")
    for name, kept in renames.items():
        source, target = storage.child(experiment, name), storage.child(experiment, kept)
        if storage.exists(source) and not storage.exists(target):
            storage.move(source, target)
    kept_record = storage.child(experiment, earlier_name(FINAL_FILE, earlier))
    storage.move(record_path, kept_record)
    return kept_record
