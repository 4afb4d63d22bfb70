"""The audience pipeline's DAGs, generated from config.

- ``ingest_<source>`` — one per enabled source in sources.yaml, on that source's own ``schedule``
  (cron, business time zone): extract each table, validate it with Great Expectations, stop at the
  source's quality gate, then publish the Asset ``audiences://validated/<source>`` with the
  business date it answers for.
- ``customer_segments`` — runs when every source has published (Assets): unify, features,
  segments, then one delivery per (segment, destination) as mapped tasks, one task per destination
  in that platform's pool; syncs held for approval go to a human-in-the-loop approval task.

Wiring only: every task calls one function of ``tasks.pipeline``; heavy libraries are imported
inside the task callables, and parsing reads nothing but sources.yaml and destinations.yaml.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, AssetAll, CronTriggerTimetable, dag, task

from tasks import progress, topology
from tasks.alerts import on_task_failure


def _as_list(values: Any) -> list[Any]:
    """Materialize a mapped task's results by index (iterating probes past the end and logs a 404)."""
    return [values[i] for i in range(len(values))]


RETRIES = int(os.environ.get("AUDIENCES_TASK_RETRIES", "2"))
# The schedule's zone comes from the environment; resolve_run checks it against pipeline.yaml's
# business_timezone so the two cannot silently disagree.
TIMEZONE = os.environ.get("AUDIENCES_TIMEZONE", "Asia/Ho_Chi_Minh")
START = datetime(2026, 1, 1)
DEFAULT_ARGS: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "on_execute_callback": progress.on_start,
    "on_success_callback": progress.on_success,
    "on_failure_callback": [progress.on_failure, on_task_failure],
}
# Platform syncs wait longer between tries: throttling windows are minutes, not seconds.
SYNC_RETRY = {"retries": RETRIES + 1, "retry_delay": timedelta(minutes=5)}
INGESTIONS = topology.ingestions()
DELIVERIES = topology.deliveries()


def _asset(ingestion: topology.Ingestion) -> Asset:
    return Asset(name=f"validated_{ingestion.source}", uri=ingestion.asset_uri)


def ingest_dag(ingestion: topology.Ingestion) -> Any:
    asset = _asset(ingestion)

    @dag(
        dag_id=ingestion.dag_id,
        description=f"Extract and validate source {ingestion.source!r}; publish {ingestion.asset_uri}",
        schedule=CronTriggerTimetable(ingestion.schedule, timezone=TIMEZONE),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["audiences", "ingest"],
        doc_md=__doc__,
    )
    def ingest() -> None:
        @task
        def resolve_run(data_interval_end: datetime | None = None, dag_run: Any = None) -> str:
            """Business date this run answers for: a scheduled run closes the day before its trigger."""
            from tasks import pipeline

            assert data_interval_end is not None
            # Scheduled and backfilled runs fire on the schedule's tick after the day they close.
            run_type = str(getattr(dag_run, "run_type", "")).lower()
            scheduled = run_type.endswith(("scheduled", "backfill", "backfill_job"))
            return pipeline.run_date_for(data_interval_end, schedule_timezone=TIMEZONE, scheduled=scheduled)

        @task
        def list_tables() -> list[dict[str, str]]:
            from tasks import pipeline

            return pipeline.source_tables(ingestion.source)

        @task(map_index_template="{{ task.op_kwargs['pair']['table'] }}")
        def extract(pair: dict[str, str], run_date: str) -> dict[str, Any]:
            """Raw rows land in the lake as they came; unparseable lines go to quarantine."""
            from tasks import pipeline

            return pipeline.extract(pair["source"], pair["table"], run_date)

        @task
        def validation_wave(extracted: list[dict[str, Any]], wave: str) -> list[dict[str, Any]]:
            """Tables referenced by others (orders) are validated before those referencing them (lines)."""
            from tasks import pipeline

            return pipeline.validation_waves(_as_list(extracted))[wave]

        @task(map_index_template="{{ task.op_kwargs['extracted']['table'] }}")
        def validate(extracted: dict[str, Any], run_date: str) -> dict[str, Any]:
            """Great Expectations suite of the table; failing rows are quarantined with their reason."""
            from tasks import pipeline

            return pipeline.validate(extracted["source"], extracted["table"], run_date)

        @task(retries=0, trigger_rule="none_failed", outlets=[asset])
        def quality_gate(
            run_date: str,
            extracts: list[dict[str, Any]],
            first: list[dict[str, Any]],
            second: list[dict[str, Any]],
            **context: Any,
        ) -> dict[str, Any]:
            """Fails before anything downstream runs when a critical expectation failed; else publishes the Asset."""
            from tasks import pipeline

            result = pipeline.gate(
                _as_list(first) + _as_list(second), extracts=_as_list(extracts), source=ingestion.source
            )
            context["outlet_events"][asset].extra = {"run_date": run_date, "source": ingestion.source}
            return result

        run_date = resolve_run()
        extracted = extract.partial(run_date=run_date).expand(pair=list_tables())
        first_wave = validation_wave.override(task_id="tables_to_validate_first")(extracted, "first")
        second_wave = validation_wave.override(task_id="tables_referencing_others")(extracted, "second")
        first = validate.partial(run_date=run_date).expand(extracted=first_wave)
        second = (
            validate.override(task_id="validate_referencing").partial(run_date=run_date).expand(extracted=second_wave)
        )
        first >> second
        quality_gate(run_date, extracted, first, second)

    return ingest()


@dag(
    dag_id="customer_segments",
    description="Customer 360 -> segments -> audience files and platform syncs, when every source has landed",
    schedule=AssetAll(*(_asset(i) for i in INGESTIONS)),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["audiences", "segments", "delivery"],
    doc_md=__doc__,
)
def customer_segments() -> None:
    @task
    def resolve_run(dag_run: Any = None, triggering_asset_events: Any = None) -> str:
        """The business date: from a manual run's conf, else from the sources' Asset events."""
        from tasks import pipeline

        conf = (dag_run.conf or {}) if dag_run is not None else {}
        dates = [
            str(event.extra.get("run_date"))
            for events in (triggering_asset_events or {}).values()
            for event in events
            if event.extra and event.extra.get("run_date")
        ]
        return pipeline.segment_run_date(conf.get("run_date"), dates)

    @task
    def unify(run_date: str) -> dict[str, int]:
        """One profile per customer: identity resolution across POS, web and CRM."""
        from tasks import pipeline

        return pipeline.build_unified(run_date)

    @task
    def build_features(run_date: str) -> dict[str, int]:
        """The customer 360 feature table as of the run date."""
        from tasks import pipeline

        return pipeline.features(run_date)

    @task
    def evaluate_segments(run_date: str) -> list[str]:
        """Every segment of segments.yaml and the packs, with reasons and history."""
        from tasks import pipeline

        return pipeline.segments(run_date)

    @task
    def held_syncs(deliveries: list[Any]) -> list[dict[str, Any]]:
        """Syncs whose plan was held (large removal, empty segment, source problem)."""
        return [d for d in _as_list(deliveries) if d and d.get("status") == "held"]

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def any_held(held: list[dict[str, Any]]) -> bool:
        return bool(held)

    approve = ApprovalOperator(
        task_id="approve_held_syncs",
        subject="Audience syncs held for approval ({{ ti.xcom_pull(task_ids='held_syncs') | length }})",
        body=(
            "{% for s in ti.xcom_pull(task_ids='held_syncs') %}"
            "- **{{ s.segment }} → {{ s.destination }}** (plan `{{ s.plan_id }}`): {{ s.hold_reason }}\n"
            "{% endfor %}\nApprove to apply these plans now; reject to leave them held "
            "(the next run plans again). `audiences syncs` shows each plan's counts."
        ),
        defaults="Reject",
        response_timeout=timedelta(hours=20),
    )

    @task
    def apply_approved(held: list[dict[str, Any]], run_date: str, ti: Any = None) -> list[dict[str, Any]]:
        """Marks the held plans approved (by the responder) and applies them."""
        from tasks import pipeline

        answer = ti.xcom_pull(task_ids="approve_held_syncs") if ti is not None else None
        by = "airflow"
        if isinstance(answer, dict) and answer.get("responded_by_user"):
            by = f"airflow:{answer['responded_by_user'].get('name') or answer['responded_by_user'].get('id')}"
        return pipeline.apply_held(held, run_date, by)

    @task(trigger_rule="all_done")
    def summarize(run_date: str, deliveries: list[Any]) -> dict[str, Any]:
        """Run summary (rows, quarantine, members per destination) and the delivery history report."""
        from tasks import pipeline

        return pipeline.summarize_run(run_date, _as_list(deliveries))

    run_date = resolve_run()
    segs = evaluate_segments(run_date)
    unify(run_date) >> build_features(run_date) >> segs
    delivered = []
    for delivery in DELIVERIES:

        @task(task_id=f"targets__{delivery.destination}")
        def targets(segments: list[str], destination: str = delivery.destination) -> list[str]:
            from tasks import pipeline

            return [t["segment"] for t in pipeline.sync_targets(list(segments)) if t["destination"] == destination]

        @task(
            task_id=f"deliver__{delivery.destination}",
            map_index_template="{{ task.op_kwargs['segment'] }}",
            pool=delivery.pool or "default_pool",
            **(SYNC_RETRY if delivery.pool else {}),
        )
        def deliver(segment: str, run_date: str, destination: str = delivery.destination) -> dict[str, Any]:
            """One segment to this destination: a file, or a platform sync (plan, then apply or hold)."""
            from tasks import pipeline

            return pipeline.deliver_to(segment, destination, run_date)

        delivered.append(deliver.partial(run_date=run_date).expand(segment=targets(segs)))

    @task
    def collect(*results: Any) -> list[dict[str, Any]]:
        return [d for result in results for d in _as_list(result)]

    everything = collect(*delivered)
    held = held_syncs(everything)
    gate = any_held(held)
    applied = apply_approved(held, run_date)
    gate >> approve >> applied
    summarize(run_date, everything) << applied


for _ingestion in INGESTIONS:
    globals()[f"{_ingestion.dag_id}_dag"] = ingest_dag(_ingestion)
customer_segments_dag = customer_segments()
