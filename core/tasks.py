"""Starting background work by task name.

Services send tasks by name instead of importing task functions, so that any layer can start
work owned by a layer above it (a user message starts tag suggestions in labeling) without an
import pointing up, and a services module never imports its app's tasks module (which imports
the services). Queues, routes and limits are set per name in `workers.celery_app`.
"""

from __future__ import annotations

from celery import current_app


def task_send(name: str, *args: object, queue: str | None = None) -> None:
    """Queue task `name` with `args` now (eagerly run where CELERY_TASK_ALWAYS_EAGER is set), on `queue` when
    given (else the route set for `name`)."""
    app = current_app
    if app.conf.task_always_eager:
        app.loader.import_default_modules()
        app.tasks[name].apply(args=args)
        return
    if queue:
        app.send_task(name, args=args, queue=queue)
    else:
        app.send_task(name, args=args)
