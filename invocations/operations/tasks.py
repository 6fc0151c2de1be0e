"""The procrastinate tasks (run by `manage.py procrastinate worker`): bulk jobs and
attach waits. Tasks are thin: the work is in `bulk` and `attach`, which tests call.

Two queues, two kinds of worker: bulk jobs are few and heavy (a thread each),
attach waits are many and idle (async, one coroutine each), so a crowd of
attached browsers can never starve a bulk cancel of workers.
"""

from __future__ import annotations

BULK_QUEUE = "bulk"
ATTACH_QUEUE = "attach"
