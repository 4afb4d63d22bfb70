"""One line per task start and finish, so a long run shows where it is.

Attached to every task as Airflow callbacks: in `audiences run` / `demo` (dag.test, in-process)
the lines reach the terminal; under the scheduler they land in each task's log.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_started: dict[tuple[str, int], float] = {}  # (dag.task, map index) -> start


def _label(context: Any) -> tuple[str, tuple[str, int]]:
    ti = context["ti"]
    index = getattr(ti, "map_index", -1)
    shown = getattr(ti, "rendered_map_index", None) or (str(index) if index >= 0 else "")
    dag_id = str(getattr(ti, "dag_id", ""))
    task = f"{dag_id}.{ti.task_id}" if dag_id.startswith("ingest_") else ti.task_id
    return (f"{task}[{shown}]" if shown else task), (f"{dag_id}.{ti.task_id}", index)


def _say(text: str) -> None:
    # The process's real stdout: inside a task Airflow may point sys.stdout at the task log.
    stream = sys.__stdout__ or sys.stdout
    if stream is None or stream.closed:  # a Celery worker's task process has no terminal
        return
    try:
        stream.write(f"  {time.strftime('%H:%M:%S')} {text}\n")
        stream.flush()
    except (ValueError, OSError):
        pass


def on_start(context: Any) -> None:
    label, key = _label(context)
    _started[key] = time.monotonic()
    _say(f"started  {label}")


def on_success(context: Any) -> None:
    label, key = _label(context)
    began = _started.pop(key, None)
    took = f" in {time.monotonic() - began:.1f}s" if began is not None else ""
    _say(f"finished {label}{took}")


def on_failure(context: Any) -> None:
    label, _ = _label(context)
    _say(f"FAILED   {label}: {context.get('exception')!s:.500}")
