"""Daily customer segments: extract -> validate (GX) -> quality gate -> unify -> features -> segments -> deliver.

Wiring only: every task calls one function of ``tasks.pipeline``; heavy libraries are imported
inside the task callables so the scheduler parses this file in milliseconds.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from tasks import progress


def _as_list(values: Any) -> list[Any]:
    """Materialize a mapped task's results by index (iterating probes past the end and logs a 404)."""
    return [values[i] for i in range(len(values))]


RETRIES = int(os.environ.get("AUDIENCES_TASK_RETRIES", "2"))
# Parsing reads no files: the schedule's zone comes from the environment, and resolve_run checks
# it against pipeline.yaml's business_timezone so the two cannot silently disagree.
TIMEZONE = os.environ.get("AUDIENCES_TIMEZONE", "Asia/Ho_Chi_Minh")


@dag(
    dag_id="customer_segments",
    description="Sources -> Great Expectations -> customer 360 -> segments -> audience files",
    schedule=CronTriggerTimetable("0 0 * * *", timezone=TIMEZONE),  # after each business day closes
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": RETRIES,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "on_execute_callback": progress.on_start,
        "on_success_callback": progress.on_success,
        "on_failure_callback": progress.on_failure,
    },
    tags=["audiences"],
    doc_md=__doc__,
)
def customer_segments() -> None:
    @task
    def resolve_run(data_interval_end: datetime | None = None) -> str:
        """Business date this run answers for (the day that closed at the data interval end)."""
        from tasks import pipeline

        assert data_interval_end is not None
        return pipeline.run_date_for(data_interval_end, schedule_timezone=TIMEZONE)

    @task
    def list_source_tables() -> list[dict[str, str]]:
        from tasks import pipeline

        return pipeline.source_tables()

    @task(map_index_template="{{ task.op_kwargs['pair']['source'] }}.{{ task.op_kwargs['pair']['table'] }}")
    def extract(pair: dict[str, str], run_date: str) -> dict[str, Any]:
        from tasks import pipeline

        return pipeline.extract(pair["source"], pair["table"], run_date)

    @task(map_index_template="{{ task.op_kwargs['extracted']['source'] }}.{{ task.op_kwargs['extracted']['table'] }}")
    def validate(extracted: dict[str, Any], run_date: str) -> dict[str, Any]:
        from tasks import pipeline

        return pipeline.validate(extracted["source"], extracted["table"], run_date)

    @task
    def validation_wave(extracted: list[dict[str, Any]], wave: str) -> list[dict[str, Any]]:
        """Tables referenced by others (orders) are validated before those referencing them (lines)."""
        from tasks import pipeline

        return pipeline.validation_waves(_as_list(extracted))[wave]

    @task(retries=0, trigger_rule="none_failed")
    def quality_gate(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, Any]:
        """Fails the run, before any delivery, when a critical expectation failed."""
        from tasks import pipeline

        return pipeline.gate(_as_list(first) + _as_list(second))

    @task
    def unify(run_date: str) -> dict[str, int]:
        from tasks import pipeline

        return pipeline.build_unified(run_date)

    @task
    def build_features(run_date: str) -> dict[str, int]:
        from tasks import pipeline

        return pipeline.features(run_date)

    @task
    def evaluate_segments(run_date: str) -> list[str]:
        from tasks import pipeline

        return pipeline.segments(run_date)

    @task
    def sync_targets(segments: list[str]) -> list[dict[str, str]]:
        """Every (segment, destination) pair to deliver, from destinations.yaml."""
        from tasks import pipeline

        return pipeline.sync_targets(list(segments))

    @task(
        map_index_template="{{ task.op_kwargs['target']['segment'] }} -> {{ task.op_kwargs['target']['destination'] }}"
    )
    def deliver(target: dict[str, str], run_date: str) -> dict[str, Any]:
        """One segment to one destination: a file, or a platform sync (plan, then apply or hold)."""
        from tasks import pipeline

        return pipeline.deliver_to(target["segment"], target["destination"], run_date)

    @task
    def summarize(
        run_date: str,
        extracts: list[dict[str, Any]],
        first: list[dict[str, Any]],
        second: list[dict[str, Any]],
        deliveries: list[Any],
    ) -> dict[str, Any]:
        from tasks import pipeline

        reports = _as_list(first) + _as_list(second)
        return pipeline.summarize(run_date, _as_list(extracts), reports, _as_list(deliveries))

    run_date = resolve_run()
    extracted = extract.partial(run_date=run_date).expand(pair=list_source_tables())
    first_wave = validation_wave.override(task_id="tables_to_validate_first")(extracted, "first")
    second_wave = validation_wave.override(task_id="tables_referencing_others")(extracted, "second")
    first = validate.partial(run_date=run_date).expand(extracted=first_wave)
    second = validate.override(task_id="validate_referencing").partial(run_date=run_date).expand(extracted=second_wave)
    first >> second
    gate = quality_gate(first, second)
    unified = unify(run_date)
    gate >> unified
    feats = build_features(run_date)
    unified >> feats
    segs = evaluate_segments(run_date)
    feats >> segs
    delivered = deliver.partial(run_date=run_date).expand(target=sync_targets(segs))
    summarize(run_date, extracted, first, second, delivered)


customer_segments_dag = customer_segments()
