"""The asyncio face of the store: coroutines on worker threads, group commit under many tasks."""

from __future__ import annotations

import asyncio
import threading

import pytest
from domain import Account, AccountOpened, Balances, MoneyDeposited

import minies


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_the_store_s_methods_are_coroutines_and_reads_are_async_iterators(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location, projections=[Balances()]) as store:
            assert await store.append("acc-1", [MoneyDeposited(amount=5)], aggregate_type="Account") == 1
            account = Account(id="acc-2")
            account.record(AccountOpened(owner="ann", balance=10))
            assert await store.save(account) == 1
            assert (await store.load(Account, "acc-2")).balance == 10
            assert await store.version("acc-1") == 1
            assert [r.version async for r in store.read("acc-1")] == [1]
            assert [r.aggregate_id async for r in store.read_all()] == ["acc-1", "acc-2"]
            assert await store.query("SELECT * FROM balances ORDER BY 1") == [("acc-1", 5), ("acc-2", 10)]
            assert await store.aggregates() == [("acc-1", "Account", 1), ("acc-2", "Account", 1)]
            assert (await store.head())[0] == 2 and (await store.verify()).ok
            assert (await store.rebuild("Balances")).events == 2
            with pytest.raises(minies.ConcurrencyError, match="aggregate 'acc-1' is at version 1, expected 0"):
                await store.append("acc-1", [MoneyDeposited(amount=1)], aggregate_type="Account", expected_version=0)

    run(main())


def test_many_tasks_with_conflicts_lose_and_double_nothing(db_path: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(db_path, projections=[Balances()]) as store:
            commits: list[int] = []
            store.store._conn.set_commit_hook(lambda: bool(commits.append(1)))

            attempts = [0]

            async def task(n: int) -> None:
                for i in range(5):
                    attempts[0] += 1
                    await store.append(
                        f"own-{n}", [MoneyDeposited(amount=1)], aggregate_type="Account", expected_version=i
                    )
                for _ in range(10_000):  # bounded retries on the shared aggregate
                    seen = await store.version("shared")
                    attempts[0] += 1
                    try:
                        await store.append(
                            "shared", [MoneyDeposited(amount=1)], aggregate_type="Account", expected_version=seen
                        )
                        return
                    except minies.ConcurrencyError:
                        continue
                raise AssertionError("no progress")

            await asyncio.gather(*(task(n) for n in range(200)))
            events = [r async for r in store.read_all()]
            assert [r.position for r in events] == list(range(1, 1201))
            assert await store.version("shared") == 200
            assert len(commits) < attempts[0]  # tasks shared commits
            live = await store.query("SELECT * FROM balances ORDER BY account_id")
            await store.rebuild("Balances")
            assert await store.query("SELECT * FROM balances ORDER BY account_id") == live
            assert (await store.verify()).ok

    run(main())


def test_a_cancelled_append_is_whole_or_absent_and_the_store_goes_on(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            ids = ["0196f3c1-0000-7000-8000-000000000001", "0196f3c1-0000-7000-8000-000000000002"]
            task = asyncio.create_task(
                store.append("a", [MoneyDeposited(amount=1)] * 2, aggregate_type="Account", event_ids=ids)
            )
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The write ran on: retrying with the same ids tells its outcome, and never doubles it.
            assert await store.append("a", [MoneyDeposited(amount=1)] * 2, aggregate_type="Account", event_ids=ids) == 2
            assert [r.event_id async for r in store.read("a")] == ids

    run(main())


def test_follow_delivers_to_a_coroutine_handler_and_stops(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            seen: list[int] = []
            stop = asyncio.Event()

            async def handler(record: minies.Recorded) -> None:
                seen.append(record.position)
                if len(seen) == 30:
                    stop.set()

            follower = asyncio.create_task(store.follow("mailer", handler, stop=stop))
            for i in range(30):
                await store.append(f"a{i % 3}", [MoneyDeposited(amount=i)], aggregate_type="Account")
            assert await asyncio.wait_for(follower, 30) == 30
            assert seen == list(range(1, 31))
            assert store.store.subscription("mailer").position == 30
            assert await store.follow("mailer", handler, idle_timeout=0.05) == 0

    run(main())


def test_using_it_unopened_says_how_to_open_it(location: str) -> None:
    store = minies.AsyncEventStore(location)
    with pytest.raises(RuntimeError, match="the store is not open: use `async with AsyncEventStore"):
        store.store  # noqa: B018
    run(store.close())


class AsyncNoteTaken(minies.Event):  # the subject is the aggregate id
    note: minies.Personal[str] = ""


def test_every_argument_reaches_the_blocking_store(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            account = Account(id="acc-1")
            account.record(AccountOpened(owner="ann", balance=10))
            account.record(MoneyDeposited(amount=5))
            assert await store.save(account, {"user_id": "u-7"}) == 2
            assert [r.metadata async for r in store.read("acc-1")] == [{"user_id": "u-7"}] * 2
            assert (await store.load(Account, "acc-1", upto=1)).balance == 10
            assert [r.version async for r in store.read("acc-1", after=1)] == [2]
            assert [r.position async for r in store.read_all(after=1)] == [2]
            await store.append("note-1", [AsyncNoteTaken(note="private")], aggregate_type="Patient")
            assert await store.aggregates("Patient") == [("note-1", "Patient", 1)]
            assert await store.query("SELECT count(*) FROM events WHERE version = ?", (2,)) == [(1,)]
            head = await store.head()
            assert (await store.verify(expect_head=f"{head[0]} {head[1]}")).ok
            assert not (await store.verify(expect_head=f"{head[0]} {'0' * 64}")).ok
            erasure = await store.forget("note-1", reason="asked to", metadata={"user_id": "dpo"})
            (forgotten,) = [r async for r in store.read_all(after=erasure.position - 1)]
            assert (forgotten.data.reason, forgotten.metadata) == ("asked to", {"user_id": "dpo"})

            seen: list[int] = []
            await store.follow(
                "deposits", lambda r: seen.append(r.position), event_types=[MoneyDeposited], idle_timeout=0
            )
            assert seen == [2]

    run(main())


def test_follow_backs_off_from_5_ms_doubling_up_to_max_wait_and_stops_after_idle_timeout(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a clock that moves only when ``follow`` sleeps: each wait it asks for, and when it stops."""

    async def main(waits_before_an_event: int, stop_after: int = 0, **options: float) -> list[float]:
        waits: list[float] = []
        stop = asyncio.Event()
        clock = [100.0]
        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            clock[0] += 1
            if len(waits) == waits_before_an_event:
                store.store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
            if len(waits) == stop_after:
                stop.set()
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", sleep)
        monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: clock[0])
        async with minies.AsyncEventStore(location) as store:
            delivered = await store.follow("f", print, stop=stop, **options)  # type: ignore[arg-type]
            assert delivered == (1 if waits_before_an_event else 0)
        monkeypatch.undo()
        return waits

    assert run(main(0, idle_timeout=3)) == [0.005, 0.01, 0.02]  # stops once 3 s have passed with nothing
    assert run(main(0, stop_after=4)) == [0.005, 0.01, 0.02, 0.04]  # or once told to stop
    backing_off = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25]
    assert run(main(5, idle_timeout=8)) == [*backing_off[:5], *backing_off]  # an event starts it again
    assert run(main(0, idle_timeout=6, max_wait=0.03)) == [0.005, 0.01, 0.02, 0.03, 0.03, 0.03]


def test_reads_come_a_page_at_a_time(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            await store.append("a", [MoneyDeposited(amount=1)] * 1_200, aggregate_type="Account")
            calls: list[object] = []
            run_on_a_thread = store._run
            monkeypatch.setattr(store, "_run", lambda *args: calls.append(args) or run_on_a_thread(*args))
            assert [r.version async for r in store.read("a")] == list(range(1, 1_201))
            assert len(calls) == 5  # the read, 3 pages (500, 500, 200), the end

    run(main())


def test_calls_run_on_up_to_workers_threads_of_its_own(location: str) -> None:
    """``workers`` threads (8 by default), named ``minies_N``: as many calls at once, and no more."""

    async def at_once(store: minies.AsyncEventStore, n: int, timeout: float) -> set[str]:
        barrier = threading.Barrier(n, timeout=timeout)

        def meet() -> str:
            barrier.wait()
            return threading.current_thread().name

        names = await asyncio.gather(*(store._run(meet) for _ in range(n)), return_exceptions=True)
        if any(isinstance(name, BaseException) for name in names):
            return set()  # the barrier broke: fewer threads than calls
        return set(names)  # type: ignore[arg-type]

    async def main(workers: int | None) -> None:
        options = {} if workers is None else {"workers": workers}
        n = workers or 8
        async with minies.AsyncEventStore(location, **options) as store:
            names = await at_once(store, n, timeout=30)
            assert len(names) == n and all(name.startswith("minies_") for name in names)
            assert await at_once(store, n + 1, timeout=0.3) == set()

    run(main(None))
    run(main(3))


def test_close_does_not_wait_for_a_call_still_running(location: str) -> None:
    async def main() -> None:
        released = threading.Event()
        timer = threading.Timer(10, released.set)  # frees the thread in the end, whatever happens
        timer.start()
        store = await minies.AsyncEventStore(location).open()
        running = asyncio.ensure_future(store._run(released.wait))
        await asyncio.sleep(0.05)
        await store.close()
        assert not released.is_set()  # close returned while the call still ran
        released.set()
        timer.cancel()
        await running

    run(main())


def test_follow_awaits_a_coroutine_handler_and_retries_and_parks_what_it_raises(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            await store.append("a", [MoneyDeposited(amount=k) for k in range(3)], aggregate_type="Account")
            tries: list[int] = []
            done: list[int] = []

            async def handler(record: minies.Recorded) -> None:
                await asyncio.sleep(0)
                tries.append(record.position)
                if record.position == 2:
                    raise RuntimeError("mail server down")
                await asyncio.sleep(0.01)  # the checkpoint waits for the coroutine's end
                done.append(record.position)

            assert await store.follow("mailer", handler, idle_timeout=0, max_attempts=2) == 3
            assert tries == [1, 2, 2, 3] and done == [1, 3]
            (parked,) = store.store.subscription("mailer").dead_letters()
            assert (parked.position, parked.attempts) == (2, 2) and "mail server down" in parked.error

    run(main())


def test_follow_looks_at_stop_between_pages_not_after_the_whole_backlog(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            await store.append("a", [MoneyDeposited(amount=1)] * 1000, aggregate_type="Account")
            stop = asyncio.Event()

            def handler(record: minies.Recorded) -> None:
                stop.set()

            delivered = await store.follow("slow", handler, stop=stop)
            assert 1 <= delivered <= 100
            assert store.store.subscription("slow").position == delivered

    run(main())


def test_a_cancelled_follow_stops_delivering_and_leaves_no_worker_behind(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            await store.append("a", [MoneyDeposited(amount=1)] * 50, aggregate_type="Account")
            seen: list[int] = []
            inside = asyncio.Event()

            async def handler(record: minies.Recorded) -> None:
                seen.append(record.position)
                if record.position == 5:
                    inside.set()
                    await asyncio.sleep(0.2)  # cancelled while this one is in hand

            follower = asyncio.create_task(store.follow("c", handler))
            await inside.wait()
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower
            assert seen == [1, 2, 3, 4, 5]  # the event in hand finished; nothing after it began
            await asyncio.sleep(0.3)  # longer than the handler in hand
            assert seen == [1, 2, 3, 4, 5]  # and no worker went on polling
            assert store.store.subscription("c").position == 0  # the page was not acknowledged
            assert await store.follow("c", lambda r: None, idle_timeout=0) == 50  # it comes again

    run(main())


def test_it_has_every_public_method_of_the_blocking_store() -> None:
    """So the two cannot drift apart: each EventStore method is a coroutine here, or an async
    iterator (reads), an async context manager (transaction), or awaitable objects'."""
    import inspect

    blocking = {name for name, value in vars(minies.EventStore).items() if callable(value) and not name.startswith("_")}
    asynchronous = {name for name in dir(minies.AsyncEventStore) if not name.startswith("_")}
    assert blocking - asynchronous == set()
    iterators, managers, objects = {"read", "read_all"}, {"transaction"}, {"subscription", "processor"}
    for name in blocking - iterators - managers - objects:
        assert inspect.iscoroutinefunction(getattr(minies.AsyncEventStore, name)), name


def test_every_call_runs_in_the_caller_s_context_so_metadata_scope_reaches_the_events(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            with minies.metadata_scope(correlation_id="req-1"):
                await store.append("n1", [MoneyDeposited(amount=1)], aggregate_type="Account")
                account = Account(id="acc-1")
                account.record(AccountOpened(owner="ann", balance=1))
                await store.save(account)
                async with store.transaction():
                    await store.append("n1", [MoneyDeposited(amount=2)], aggregate_type="Account")
            assert [r.metadata async for r in store.read_all()] == [{"correlation_id": "req-1"}] * 3

    run(main())


def test_an_async_transaction_commits_its_block_atomically_or_not_at_all(location: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(location) as store:
            threads: set[int] = set()
            async with store.transaction():
                account = Account(id="acc-1")
                account.record(AccountOpened(owner="ann", balance=10))
                await store.save(account)
                loaded = await store.load(Account, "acc-1")  # sees its own uncommitted write
                loaded.record(MoneyDeposited(amount=5))
                await store.save(loaded)
                threads.add(await store._run(threading.get_ident))
                threads.add(await store._run(threading.get_ident))
            assert len(threads) == 1  # the block's calls ran on its own thread
            assert (await store.load(Account, "acc-1")).balance == 15
            with pytest.raises(RuntimeError, match="no"):
                async with store.transaction():
                    await store.append("acc-2", [MoneyDeposited(amount=1)], aggregate_type="Account")
                    raise RuntimeError("no")
            assert await store.version("acc-2") == 0
            cancelled = asyncio.Event()

            async def cancelled_inside() -> None:
                async with store.transaction():
                    await store.append("acc-3", [MoneyDeposited(amount=1)], aggregate_type="Account")
                    cancelled.set()
                    await asyncio.sleep(60)

            task = asyncio.create_task(cancelled_inside())
            await cancelled.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await store.version("acc-3") == 0  # rolled back
            assert await store.append("acc-3", [MoneyDeposited(amount=1)], aggregate_type="Account") == 1

    run(main())


def test_reads_do_not_wait_behind_a_write_and_see_what_returned_before_them(db_path: str) -> None:
    async def main() -> None:
        async with minies.AsyncEventStore(db_path) as store:
            await store.append("acc-1", [MoneyDeposited(amount=1)], aggregate_type="Account")
            read_done = asyncio.Event()

            async def long_transaction() -> None:
                async with store.transaction():
                    await store.append("acc-1", [MoneyDeposited(amount=1)], aggregate_type="Account")
                    await read_done.wait()  # holds the writer until a read has gone through

            writer = asyncio.create_task(long_transaction())
            await asyncio.sleep(0.05)
            assert await asyncio.wait_for(store.version("acc-1"), 30) == 1  # the committed state
            assert [r.version async for r in store.read("acc-1")] == [1]
            read_done.set()
            await writer
            assert await store.version("acc-1") == 2  # a write that returned is seen at once

    run(main())
