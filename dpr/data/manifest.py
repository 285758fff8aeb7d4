"""The record of which stage made which outputs from which inputs and settings, so a rerun skips it.

``<out_dir>/prepare_manifest.json`` maps each stage to its parameters (input fingerprints and
settings), its output file names and the counts it reported. A stage runs again when any of these
differ, when an output is missing, or with ``overwrite``; its old record is dropped before it runs,
so a crash mid-stage never leaves outputs that look valid.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dpr.atomic import atomic_file
from dpr.data.files import DataFormatError, read_versioned_json

logger = logging.getLogger(__name__)

MANIFEST = "prepare_manifest.json"
_MANIFEST_VERSION = 1


def fingerprint(path: str) -> dict[str, Any]:
    """What identifies an input file's content cheaply: path, size, modification time."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass(frozen=True)
class StageReport:
    """One stage of a run: whether its recorded outputs were reused, their file names, its counts."""

    stage: str
    reused: bool
    outputs: tuple[str, ...]
    counts: Mapping[str, Any]


class Manifest:
    """Which stage made which outputs from which parameters: a rerun skips stages that match."""

    def __init__(self, out_dir: str, overwrite: bool):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, MANIFEST)
        self.overwrite = overwrite
        self.stages: dict[str, Any] = {}
        self.report: list[StageReport] = []
        if os.path.isfile(self.path):
            try:
                loaded = read_versioned_json(
                    self.path, max_version=_MANIFEST_VERSION, min_version=_MANIFEST_VERSION, required=("stages",)
                )
                self.stages = loaded["stages"]
            except DataFormatError as err:  # only a cache: a manifest that cannot be used means "run again"
                logger.warning("%s; every stage runs again", err)

    def run(
        self, stage: str, params: dict[str, Any], outputs: list[str], make: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """``make()`` (which writes ``outputs`` and returns counts) unless a matching run is recorded."""
        params = json.loads(json.dumps(params))  # the form it takes in the file, for comparison
        entry = self.stages.get(stage)
        paths = [os.path.join(self.out_dir, name) for name in outputs]
        if (
            not self.overwrite
            and entry
            and entry.get("params") == params
            and entry.get("outputs") == outputs
            and all(os.path.exists(p) for p in paths)
        ):
            logger.info("stage %s: outputs exist with the same inputs and settings, reused", stage)
            self.report.append(StageReport(stage, True, tuple(outputs), entry.get("counts", {})))
            return entry.get("counts", {})
        self.stages.pop(stage, None)
        self._save()  # forget the old record first: a crash mid-stage must not leave it valid
        started = time.perf_counter()
        counts = make()
        logger.info("stage %s done in %.1f s", stage, time.perf_counter() - started)
        self.stages[stage] = {"params": params, "outputs": outputs, "counts": counts}
        self._save()
        self.report.append(StageReport(stage, False, tuple(outputs), counts))
        return counts

    def _save(self) -> None:
        with atomic_file(self.path) as handle:
            json.dump({"version": _MANIFEST_VERSION, "stages": self.stages}, handle, indent=1)
