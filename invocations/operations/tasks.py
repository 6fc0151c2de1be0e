"""The procrastinate tasks (run by `manage.py procrastinate worker`): bulk jobs and
attach waits. Tasks are thin: the work is in `bulk` and `attach`, which tests call.

Two queues, two kinds of worker: bulk jobs are few and heavy (a thread each),
attach waits are many and idle (async, one coroutine each), so a crowd of
attached browsers can never starve a bulk cancel of workers.
"""

from __future__ import annotations

BULK_QUEUE = "bulk"
ATTACH_QUEUE = "attach"


# ---------------------------------------------------------------- attach

import asyncio  # noqa: E402
from typing import Any  # noqa: E402

from procrastinate import JobContext, RetryDecision  # noqa: E402
from procrastinate.contrib.django import app  # noqa: E402
from procrastinate.jobs import Job  # noqa: E402
from procrastinate.retry import BaseRetryStrategy  # noqa: E402

from invocations.operations import attach as attach_service  # noqa: E402
from invocations.restate import RestateUnavailable  # noqa: E402

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
@app.task(name="attach_retry_stalled", queue=ATTACH_QUEUE, queueing_lock="attach-retry-stalled", pass_context=True)
async def attach_retry_stalled(context: JobContext, timestamp: int) -> Any:
    """A killed worker (SIGKILL, OOM, a lost host) leaves its waits `doing` forever:
    procrastinate marks such jobs stalled once the worker's heartbeat is old, and
    leaves retrying them to us. Every minute, they go back to `todo`."""
    manager = context.app.job_manager
    stalled = await manager.get_stalled_jobs(task_name=ATTACH_TASK, seconds_since_heartbeat=ATTACH_STALLED_AFTER_S)
    for job in stalled:
        await manager.retry_job(job)
    return len(list(stalled))
