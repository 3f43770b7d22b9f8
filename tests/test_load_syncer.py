"""The load runner's group syncer never lets a request out unsynced: not before its own store's sync
returned, not when a batch fails before it reached the stores (no thread to run it, an executor shut
down: every waiter of that batch raises), not after it stopped; stopping it lets a sync in progress
finish, and a terminal cancelled while it waits is simply never woken."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from terminal.load import syncer as syncer_module
from terminal.load.syncer import GroupSyncer
from terminal.store import StoreError


class FakeStore:
    def __init__(self, terminal_id: str) -> None:
        self.terminal_id = terminal_id
        self.synced = False

    def sync(self) -> None:
        self.synced = True


async def test_a_batch_that_never_ran_releases_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_thread(*_args: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(syncer_module, "_sync_all", no_thread)
    syncer = GroupSyncer(batches_in_flight=1, sync_threads=1)
    stores = [FakeStore(f"T{index}") for index in range(3)]
    refused: list[str] = []
    sent: list[str] = []

    async def terminal(store: FakeStore) -> None:
        try:
            await syncer(store)  # type: ignore[arg-type]
        except StoreError as exc:
            refused.append(str(exc))
            return
        sent.append(store.terminal_id)  # what would be sent: must never happen here

    crash = pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="new thread"), flatten_subgroups=True)
    with trio.fail_after(10), crash:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            for store in stores:
                nursery.start_soon(terminal, store)
    assert sent == [] and not any(store.synced for store in stores)
    assert sorted(refused) == [f"terminal T{index}: store not synced; the request is not sent" for index in range(3)]

@pytest.mark.parametrize("sync_threads", [1, 8])
async def test_group_syncer_releases_each_terminal_only_after_its_own_store_synced(sync_threads: int) -> None:
    """Real worker threads (no autojump): many terminals' syncs go out in a few batches, each batch's
    stores one after the other (1) or in parallel (8)."""
    synced: list[str] = []

    class FakeStore:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def sync(self) -> None:
            if self.fail:
                raise OSError(f"{self.name}: No space left on device")
            synced.append(self.name)

    syncer = GroupSyncer(batches_in_flight=2, sync_threads=sync_threads)
    released: list[str] = []
    failures: list[str] = []

    async def terminal(store: FakeStore) -> None:
        try:
            await syncer(store)  # type: ignore[arg-type]
        except OSError as exc:
            failures.append(str(exc))
            return
        assert store.name in synced  # never released before its own sync returned
        released.append(store.name)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            async with trio.open_nursery() as terminals:
                for index in range(30):
                    terminals.start_soon(terminal, FakeStore(f"T{index:02d}", fail=index == 7))
            nursery.cancel_scope.cancel()
    assert sorted(released) == sorted(synced) and len(released) == 29
    assert failures == ["T07: No space left on device"]  # only that terminal's request is stopped


def test_group_syncer_needs_at_least_one_batch_and_thread() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        GroupSyncer(sync_threads=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        GroupSyncer(batches_in_flight=0)


class GatedStore:
    """A store whose sync blocks in its thread until the test opens the gate."""

    def __init__(self, terminal_id: str) -> None:
        self.terminal_id = terminal_id
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.synced = False

    def sync(self) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.synced = True


async def test_a_request_waits_while_its_store_is_being_synced() -> None:
    syncer = GroupSyncer(batches_in_flight=2, sync_threads=2)
    store = GatedStore("T1")
    released = trio.Event()

    async def terminal() -> None:
        await syncer(store)  # type: ignore[arg-type]
        assert store.synced
        released.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            nursery.start_soon(terminal)
            assert await trio.to_thread.run_sync(store.entered.wait, 10)
            await trio.testing.wait_all_tasks_blocked()
            assert not released.is_set()  # its sync has not returned: the request must not leave
            store.gate.set()
            await released.wait()
            nursery.cancel_scope.cancel()


async def test_stopping_lets_a_sync_in_progress_finish_and_refuses_later_ones() -> None:
    syncer = GroupSyncer(batches_in_flight=1, sync_threads=1)
    store, queued = GatedStore("T1"), FakeStore("T2")
    outcomes: list[str] = []

    async def terminal(store: GatedStore | FakeStore) -> None:
        try:
            await syncer(store)  # type: ignore[arg-type]
        except StoreError as exc:
            outcomes.append(str(exc))
        else:
            outcomes.append(f"{store.terminal_id} released")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            nursery.start_soon(terminal, store)
            assert await trio.to_thread.run_sync(store.entered.wait, 10)
            async with trio.open_nursery() as waiting:
                waiting.start_soon(terminal, queued)  # queued behind the only batch in flight
                await trio.testing.wait_all_tasks_blocked()
                store.gate.set()  # the sync returns while (or after) the syncer stops: run() waits for it
                nursery.cancel_scope.cancel()
    assert store.synced and not queued.synced
    assert "T2 released" not in outcomes
    with pytest.raises(StoreError, match="T3: store not synced; the request is not sent"):
        await syncer(FakeStore("T3"))  # type: ignore[arg-type]


async def test_a_terminal_cancelled_while_waiting_is_not_woken_and_the_others_are() -> None:
    syncer = GroupSyncer(batches_in_flight=1, sync_threads=2)
    gated, other = GatedStore("T1"), FakeStore("T2")
    released: list[str] = []

    async def terminal(store: GatedStore | FakeStore, scope: trio.CancelScope) -> None:
        with scope:
            await syncer(store)  # type: ignore[arg-type]
            released.append(store.terminal_id)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            gated_scope, other_scope = trio.CancelScope(), trio.CancelScope()
            async with trio.open_nursery() as terminals:
                terminals.start_soon(terminal, gated, gated_scope)
                assert await trio.to_thread.run_sync(gated.entered.wait, 10)
                terminals.start_soon(terminal, other, other_scope)
                await trio.testing.wait_all_tasks_blocked()
                gated_scope.cancel()  # its terminal gives up while its store is being synced
                await trio.testing.wait_all_tasks_blocked()
                gated.gate.set()
            nursery.cancel_scope.cancel()
    assert released == ["T2"] and gated.synced and other.synced


class CountingStore(GatedStore):
    """A gated store that records how many threads are inside its sync at once."""

    def __init__(self, terminal_id: str) -> None:
        super().__init__(terminal_id)
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.syncs = 0

    def sync(self) -> None:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.syncs += 1
        try:
            super().sync()
        finally:
            with self._lock:
                self.inside -= 1


async def test_a_store_is_never_synced_by_two_threads_at_once_even_when_its_terminal_retries() -> None:
    # A terminal cancelled while its store syncs, then waiting again for the same store: with two
    # batches and two threads free, the second wait must still wait for the first sync to return
    # (two threads on one SQLite connection and one cursor), and is released after its own sync.
    syncer = GroupSyncer(batches_in_flight=2, sync_threads=2)
    store = CountingStore("T1")
    released: list[str] = []

    async def waits(label: str, scope: trio.CancelScope) -> None:
        with scope:
            await syncer(store)  # type: ignore[arg-type]
            released.append(label)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            first = trio.CancelScope()
            async with trio.open_nursery() as terminals:
                terminals.start_soon(waits, "first", first)
                assert await trio.to_thread.run_sync(store.entered.wait, 10)
                first.cancel()
                await trio.testing.wait_all_tasks_blocked()
                terminals.start_soon(waits, "retry", trio.CancelScope())
                await trio.testing.wait_all_tasks_blocked()
                # held back while the first sync runs (the syncer's task has seen it: all tasks are blocked)
                assert [waiter.store for waiter in syncer._queue] == [store] and released == []
                store.gate.set()
            nursery.cancel_scope.cancel()
    assert released == ["retry"] and store.syncs == 2 and store.most_inside == 1


async def test_two_waiters_for_one_store_share_one_sync_at_a_time() -> None:
    syncer = GroupSyncer(batches_in_flight=2, sync_threads=4)
    store = CountingStore("T1")
    store.gate.set()
    released: list[int] = []

    async def waits(index: int) -> None:
        await syncer(store)  # type: ignore[arg-type]
        released.append(index)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            async with trio.open_nursery() as terminals:
                for index in range(5):
                    terminals.start_soon(waits, index)
            nursery.cancel_scope.cancel()
    assert sorted(released) == [0, 1, 2, 3, 4] and store.most_inside == 1 and 1 <= store.syncs <= 5


async def test_a_syncer_runs_once() -> None:
    syncer = GroupSyncer()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with pytest.raises(RuntimeError, match="runs once"):
            await syncer.run()
