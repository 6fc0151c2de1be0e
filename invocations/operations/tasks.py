"""The procrastinate tasks (run by `manage.py procrastinate worker`): bulk jobs and
attach waits. Tasks are thin: the work is in `bulk` and `attach`, which tests call.

Two queues, two kinds of worker: bulk jobs are few and heavy (a thread each),
attach waits are many and idle (async, one coroutine each), so a crowd of
attached browsers can never starve a bulk cancel of workers.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from procrastinate import JobContext, RetryStrategy
from procrastinate.contrib.django import app

BULK_QUEUE = "bulk"
ATTACH_QUEUE = "attach"

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- bulk jobs

# A batch that fails to reach Restate leaves its items `sent`; the retry re-checks them.
BULK_ATTEMPTS = 5
# A worker that sent no heartbeat for this long is dead (procrastinate's workers beat
# every 10 s and treat 30 s of silence as stalled: its default).
STALLED_AFTER_S = 30.0


@app.task(
    name="bulk_job_run",
    queue=BULK_QUEUE,
    pass_context=True,
    retry=RetryStrategy(max_attempts=BULK_ATTEMPTS, wait=5, linear_wait=5),
)
def bulk_job_run(context: JobContext, job_id: int) -> None:
    from invocations.operations import bulk

    try:
        bulk.job_run(job_id=job_id)
    except Exception as exc:
        attempts = context.job.attempts if context.job is not None else 0
        if attempts + 1 >= BULK_ATTEMPTS:
            bulk.job_fail(job_id=job_id, message=f"gave up after {attempts + 1} attempts: {exc}")
        raise


def bulk_retry_stalled(*, seconds_since_heartbeat: float = STALLED_AFTER_S) -> list[int]:
    """Put bulk jobs whose worker died (SIGKILL, OOM, lost host) back in the queue.

    procrastinate 3 leaves such a job in `doing` by itself: a dead worker stops its
    heartbeat, and `JobManager.get_stalled_jobs` finds the jobs of workers silent for
    longer than `seconds_since_heartbeat` (or already pruned). Retrying puts the job
    back to `todo`; the next run resumes from its items (the `sent` ones re-checked first).
    """
    return async_to_sync(_retry_stalled)(seconds_since_heartbeat)


async def _retry_stalled(seconds_since_heartbeat: float) -> list[int]:
    jobs = await app.job_manager.get_stalled_jobs(
        queue=BULK_QUEUE, task_name=bulk_job_run.name, seconds_since_heartbeat=seconds_since_heartbeat
    )
    retried = []
    for job in jobs:
        await app.job_manager.retry_job(job)
        log.warning("bulk job task %s was stalled (its worker stopped beating): retried", job.id)
        if job.id is not None:
            retried.append(job.id)
    return retried


# Every 10 s (a 6th cron column is seconds): a killed bulk worker's job is running
# again within ~STALLED_AFTER_S + 10 s of its last heartbeat, on whichever bulk worker
# is alive. The queueing lock keeps one pending check at most.
@app.periodic(cron="* * * * * */10", periodic_id="bulk-stalled")
@app.task(name="bulk_retry_stalled", queue=BULK_QUEUE, queueing_lock="bulk_retry_stalled", pass_context=False)
async def bulk_retry_stalled_task(timestamp: int) -> None:
    await _retry_stalled(STALLED_AFTER_S)
