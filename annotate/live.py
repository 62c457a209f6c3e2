"""Live turn updates: workers publish each reply's text as it grows, web processes fan it out to the open
streams. Nothing here writes the database; the row stays the record (a stream starts from it).

With Redis (``STREAM_REDIS_URL``, by default ``REDIS_URL`` or a ``redis://`` broker), a worker publishes every
row write of a streaming turn on one channel (``publish``), and each web process holds one subscription
(``TurnFeed``) that hands each update to the streams waiting on that turn. An idle stream then costs an
asyncio wait: no thread, no database connection, no polling. Pub/sub drops what is published while a
subscriber is away, so a stream reads the rows again after the feed reconnects and every
``STREAM_RESYNC_SECONDS`` without news (a turn still waiting in the queue sends nothing).

Without Redis (the embedded SQLite + filesystem-broker set-up) ``feed()`` is None and streams poll the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q

from annotate.models import Turn
from core.db import database_unavailable
from core.middleware import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)


def channel() -> str:
    """The pub/sub channel: one per database name (Redis channels ignore the db number, and turn ids are only
    unique within a database, so two deployments or test runs on one Redis must not hear each other)."""
    return f"commonground:turns:{connection.settings_dict['NAME']}"


RESYNC = "resync"  # put in every listener's queue when the feed (re)connects: updates may have been lost
FINISHED = (Turn.Status.DONE, Turn.Status.FAILED)
STATE_FIELDS = ("id", "status", "text", "heartbeat_at", "attempt", "note")  # the columns `turn_state` takes


def turn_state(
    *,
    id: int,
    status: str,
    text: str,
    heartbeat_at: datetime | None,
    attempt: int,
    ahead: int | None = None,
    note: str = "",
) -> dict[str, Any]:
    """What a stream sends about a turn. Raters get the generic error; the detail (Turn.error) is for staff.
    `attempt` above 1 means the reply was started again (a worker stopped, or the rater retried it); `ahead`, for
    a reply still waiting, how many replies wait before it (its place in the queue)."""
    return {
        "id": id,
        "status": status,
        "text": text,
        "error": Turn.RATER_ERROR if status == Turn.Status.FAILED else "",
        "t": heartbeat_at.timestamp() if heartbeat_at else None,
        "attempt": attempt,
        "ahead": ahead,
        "note": note,  # e.g. the model is loading
    }


# --- workers: publish ------------------------------------------------------------------------------

_client: Any = None
_client_lock = threading.Lock()


def _redis() -> Any:
    """The process's Redis client for publishing (made once; thread-safe: redis-py pools connections)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                import redis  # only where a feed is configured

                _client = redis.Redis.from_url(
                    settings.STREAM_REDIS_URL, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
                )
    return _client


def publish(state: dict[str, Any]) -> None:
    """Publish one turn's state (`turn_state`) to the web processes; nothing without a feed. A Redis that
    cannot be reached is logged and skipped: the streams read the row again on their own."""
    if not settings.STREAM_REDIS_URL:
        return
    try:
        _redis().publish(channel(), json.dumps(state))
    except Exception:  # the generation must go on; the resync covers the gap
        log.warning("Could not publish the update of turn %s", state.get("id"), exc_info=True)


def announce(turn_ids: Iterable[int]) -> None:
    """Publish the current state of these turns (after a change of status) to the raters' streams."""
    if not settings.STREAM_REDIS_URL:
        return
    for row in Turn.objects.filter(pk__in=list(turn_ids)).values(*STATE_FIELDS):
        publish(turn_state(**row))


# --- web processes: one subscription, fanned out --------------------------------------------------


class TurnFeed:
    """One Redis subscription per web process (per event loop), fanned out in-process: each stream
    registers the turns it shows and gets their updates on its own asyncio queue."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.listeners: dict[int, set[asyncio.Queue[Any]]] = defaultdict(set)
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self, turn_ids: Iterable[int]) -> AsyncIterator[asyncio.Queue[Any]]:
        """A queue receiving the states of these turns (and RESYNC) from now until the block ends."""
        self._start()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        ids = list(turn_ids)
        for turn_id in ids:
            self.listeners[turn_id].add(queue)
        try:
            yield queue
        finally:
            for turn_id in ids:
                waiting = self.listeners.get(turn_id)
                if waiting is not None:
                    waiting.discard(queue)
                    if not waiting:
                        del self.listeners[turn_id]

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="turn-feed")

    async def _run(self) -> None:
        """Read the channel forever, reconnecting after a second when Redis goes away."""
        import redis.asyncio as aioredis

        me = asyncio.current_task()

        def cancelled() -> bool:  # redis may turn a cancellation into its own error: ask the task
            return me is not None and me.cancelling() > 0

        while not cancelled():
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2, health_check_interval=15)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.connected.set()
                    self._broadcast(RESYNC)  # anything published while we were away is lost: read the rows
                    while not cancelled():
                        message = await pubsub.get_message(timeout=30.0)
                        if message is not None:
                            self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                if cancelled():
                    return
                log.warning("Turn feed lost its Redis subscription; reconnecting", exc_info=True)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(1.0)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            state = json.loads(data)
            turn_id = int(state["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("Ignored a malformed turn update: %r", data[:200])
            return
        for queue in self.listeners.get(turn_id, ()):
            queue.put_nowait(state)

    def _broadcast(self, item: Any) -> None:
        for queues in self.listeners.values():
            for queue in queues:
                queue.put_nowait(item)


_feeds: dict[int, TurnFeed] = {}


def feed() -> TurnFeed | None:
    """This event loop's feed, or None without Redis (streams poll)."""
    if not settings.STREAM_REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    current = _feeds.get(id(loop))
    if current is None:
        for key in [k for k, f in _feeds.items() if f._task is not None and f._task.get_loop().is_closed()]:
            del _feeds[key]  # tests run each request in a loop of its own
        current = _feeds[id(loop)] = TurnFeed(settings.STREAM_REDIS_URL, channel())
    return current


# --- the stream of one message's candidates -------------------------------------------------------


def release_connection() -> None:
    """Give this thread's database connection back (to the pool, or closed) between reads, so an open stream
    holds none; kept inside a transaction (tests run in one)."""
    if not connection.in_atomic_block:
        connection.close()


def _states_read(turn_ids: list[int], release: bool) -> list[dict[str, Any]]:
    """The turns' states; a waiting one with its place in the queue (replies waiting that were made before it,
    all studies: the queue is shared; an index-only count)."""
    try:
        rows = list(Turn.objects.filter(pk__in=turn_ids).values(*STATE_FIELDS, "created_at"))
        states = []
        for row in rows:
            created = row.pop("created_at")
            if row["status"] == Turn.Status.PENDING:
                before = Q(created_at__lt=created) | Q(created_at=created, pk__lt=row["id"])
                row["ahead"] = Turn.objects.filter(before, status=Turn.Status.PENDING).count()
            states.append(turn_state(**row))
        return states
    finally:
        if release:
            release_connection()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: keeps proxies and the browser from closing an idle stream


# Sent before a stream ends early because the database could not be read (no free connection, a restart): the
# browser's EventSource reconnects after this many milliseconds, as a 503's Retry-After would say.
RETRY_LATER = f"retry: {RETRY_AFTER_SECONDS * 1000}\n\n".encode()


async def turn_events(turn_ids: list[int]) -> AsyncIterator[bytes]:
    """Server-sent events for these turns: each change of status or text as a `turn` event, a comment every
    STREAM_KEEPALIVE_SECONDS of silence, and `end` once all are finished. Starts from the rows (a browser that
    reconnects gets the current text at once), then follows the feed, or polls the rows without one.

    A database that cannot be read now ends the stream cleanly with RETRY_LATER: the headers are sent, so it
    can no longer be a 503, and an exception here would cut the response off mid-chunk (an aborted download
    and a traceback for what is only a busy or restarting database). The browser reconnects and starts again
    from the rows."""
    try:
        async for chunk in _turn_events(turn_ids):
            yield chunk
    except DatabaseError as exc:
        if not database_unavailable(exc):
            raise  # a wrong query is a bug: let it show
        log.warning("Stream of turns %s ended early, the database is unavailable: %s", turn_ids, exc)
        yield RETRY_LATER


async def _turn_events(turn_ids: list[int]) -> AsyncIterator[bytes]:
    read = sync_to_async(_states_read)
    turn_feed = feed()
    sent: dict[int, tuple[str, str, int, int | None]] = {}
    latest_attempt: dict[int, int] = {}
    finished: set[int] = set()
    deadline = time.monotonic() + settings.STREAM_MAX_SECONDS
    yield b"retry: 1000\n\n"

    def changes(states: Iterable[dict[str, Any]]) -> Iterable[bytes]:
        for state in states:
            if state["attempt"] < latest_attempt.get(state["id"], 0):
                continue  # the last words of an attempt that was taken over (it learns so at its next save)
            latest_attempt[state["id"]] = state["attempt"]
            key = (state["status"], state["text"], state["attempt"], state.get("ahead"))
            if state["id"] in turn_ids and sent.get(state["id"]) != key:
                sent[state["id"]] = key
                if state["status"] in FINISHED:
                    finished.add(state["id"])
                else:
                    finished.discard(state["id"])
                yield _sse("turn", state)

    if turn_feed is None:  # no Redis: poll the rows
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            for chunk in changes(await read(turn_ids, False)):
                quiet_since = time.monotonic()
                yield chunk
            if len(finished) == len(turn_ids):
                yield _sse("end", {})
                return
            if time.monotonic() - quiet_since >= settings.STREAM_KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield KEEPALIVE
            await asyncio.sleep(settings.STREAM_POLL_SECONDS)
        return

    async with turn_feed.listen(turn_ids) as updates:
        states = await read(turn_ids, True)  # after listening: nothing falls in between
        last_read = last_sent = time.monotonic()
        while True:
            for chunk in changes(states):
                last_sent = time.monotonic()
                yield chunk
            if len(finished) == len(turn_ids):
                yield _sse("end", {})
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            waiting = any(key[0] == Turn.Status.PENDING for key in sent.values())
            # A waiting reply gets no news until a worker takes it: read its place in the queue now and then.
            quiet = settings.STREAM_QUEUE_SECONDS if waiting else settings.STREAM_KEEPALIVE_SECONDS
            try:
                item = await asyncio.wait_for(updates.get(), timeout=min(quiet, remaining))
            except TimeoutError:
                states = []
                if waiting or time.monotonic() - last_read >= settings.STREAM_RESYNC_SECONDS:  # or news was lost
                    states, last_read = await read(turn_ids, True), time.monotonic()
                if not states or time.monotonic() - last_sent >= settings.STREAM_KEEPALIVE_SECONDS:
                    yield KEEPALIVE
                    last_sent = time.monotonic()
                continue
            items = [item]
            while not updates.empty():  # a burst: send the latest of each turn once
                items.append(updates.get_nowait())
            if RESYNC in items:
                states, last_read = await read(turn_ids, True), time.monotonic()
            else:
                latest = {state["id"]: state for state in items}
                states = list(latest.values())
