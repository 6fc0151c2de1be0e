"""The procrastinate tasks (run by `manage.py procrastinate worker`): bulk jobs and
attach waits. Tasks are thin: the work is in `bulk` and `attach`, which tests call.

Two queues, two kinds of worker: bulk jobs are few and heavy (a thread each),
attach waits are many and idle (async, one coroutine each), so a crowd of
attached browsers can never starve a bulk cancel of workers.

A killed worker (SIGKILL, OOM, a lost host) leaves its jobs `doing` forever:
procrastinate 3 finds them by their worker's stale heartbeat
(`JobManager.get_stalled_jobs`) but leaves retrying them to us, so each queue
has a periodic task that puts them back to `todo`.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from procrastinate import JobContext, RetryDecision, RetryStrategy
from procrastinate.contrib.django import app
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy

from invocations.operations import attach as attach_service
from invocations.restate import RestateUnavailable

BULK_QUEUE = "bulk"
ATTACH_QUEUE = "attach"

log = logging.getLogger(__name__)


async def _retry_stalled(*, queue: str, task_name: str, seconds_since_heartbeat: float) -> list[int]:
    """Put the jobs of workers silent for `seconds_since_heartbeat` back in the queue."""
    jobs = await app.job_manager.get_stalled_jobs(
        queue=queue, task_name=task_name, seconds_since_heartbeat=seconds_since_heartbeat
    )
    retried = []
    for job in jobs:
        await app.job_manager.retry_job(job)
        log.warning("%s task %s was stalled (its worker stopped beating): retried", task_name, job.id)
        if job.id is not None:
            retried.append(job.id)
    return retried


# ---------------------------------------------------------------- bulk jobs

# A batch that fails to reach Restate leaves its items `sent`; the retry re-checks them.
BULK_ATTEMPTS = 5
# A worker that sent no heartbeat for this long is dead (procrastinate's workers beat
# every 10 s and treat 30 s of silence as stalled: its default).
STALLED_AFTER_S = 30.0
BULK_TASK = "bulk_job_run"


@app.task(
    name=BULK_TASK,
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
    """Put bulk jobs whose worker died back in the queue; the next run resumes from the
    job's items (the `sent` ones re-checked in Restate first, never sent twice)."""
    return async_to_sync(_retry_stalled)(
        queue=BULK_QUEUE, task_name=BULK_TASK, seconds_since_heartbeat=seconds_since_heartbeat
    )


# Every 10 s (a 6th cron column is seconds): a killed bulk worker's job is running
# again within ~STALLED_AFTER_S + 10 s of its last heartbeat, on whichever bulk worker
# is alive. The queueing lock keeps one pending check at most.
@app.periodic(cron="* * * * * */10", periodic_id="bulk-stalled")
@app.task(name="bulk_retry_stalled", queue=BULK_QUEUE, queueing_lock="bulk_retry_stalled", pass_context=False)
async def bulk_retry_stalled_task(timestamp: int) -> None:
    await _retry_stalled(queue=BULK_QUEUE, task_name=BULK_TASK, seconds_since_heartbeat=STALLED_AFTER_S)


# ---------------------------------------------------------------- attach

ATTACH_TASK = "attach_wait"
# A worker that stopped heartbeating this long ago is dead: its attach jobs start again.
ATTACH_STALLED_AFTER_S = 60


class _AttachRetry(BaseRetryStrategy):
    """Retry while Restate is unreachable (1, 2, 4 ... 60 s, for as long as it takes: a
    wait is never dropped), and after a worker shutdown aborted the wait."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if not isinstance(exception, RestateUnavailable | asyncio.CancelledError):
            return None
        return RetryDecision(retry_in={"seconds": min(2 ** min(job.attempts, 6), 60)})


@app.task(name=ATTACH_TASK, queue=ATTACH_QUEUE, retry=_AttachRetry())
async def attach_wait(invocation_id: str) -> None:
    await attach_service.attach_wait_run(invocation_id=invocation_id)


@app.periodic(cron="* * * * *", periodic_id="attach-stalled")
@app.task(name="attach_retry_stalled", queue=ATTACH_QUEUE, queueing_lock="attach-retry-stalled")
async def attach_retry_stalled(timestamp: int) -> int:
    """Every minute, the waits of dead attach workers go back to `todo`."""
    stalled = await _retry_stalled(
        queue=ATTACH_QUEUE, task_name=ATTACH_TASK, seconds_since_heartbeat=ATTACH_STALLED_AFTER_S
    )
    return len(stalled)
