"""Batching transitions per address book: epoch-aligned tumbling windows, coalesced per contact.

Contract:

* Records are grouped per address book, i.e. per ``(connector_id, address_book_id)``. Each group
  has at most one *pending* batch, which holds each contact (normalised email) once.
* **Latest wins.** A later record of a contact already pending replaces it (its action, its event
  id, its record), in the order records are given to :meth:`Windower.add` -- which is partition
  order, and one profile's records share a partition. ``occurred_at`` is not compared: it could
  only order records inside one pending batch, never against a batch already sent, so it would
  make the outcome depend on where window boundaries fall. A contact that enters and leaves within
  one window is therefore sent once, as a remove.
* **Nothing is lost.** The replaced record is not dropped: it travels in the winner's
  :attr:`Contact.refs` and becomes final when the winner does (the caller finishes every ref of a
  contact once its outcome is final). Every record given to :meth:`add` comes out in exactly one
  emitted :class:`Batch` or in the result of :meth:`drop_partitions`.
* **Windows.** Processing time from the clock, tumbling windows of ``window_seconds`` aligned to
  the Unix epoch (window start = ``floor(now / window_seconds) * window_seconds``), so every
  instance closes the same windows at the same moments. A pending batch belongs to the window in
  which its first record arrived.
* **Clock steps.** The wall clock (``clock.time()``) only *places* a window: when a pending batch
  opens, the time left until its wall window ends is turned into a deadline on
  ``clock.monotonic()``, and that deadline alone closes it. So a pending batch never stays open
  longer than ``window_seconds`` of real time, whatever the wall clock does meanwhile: stepped
  back, it does not hold windows open (and keep filling them) until it catches up; stepped
  forward, it flushes nothing early. Windows opened after a step are aligned to the stepped wall
  clock, so ``Batch.window_start`` (wall time, for logs) may go back; instances whose clocks
  disagree close their windows at different moments, which only shifts when batches leave.
* **A batch is emitted** (leaves the windower, ready for dispatch) when it holds ``max_contacts``
  contacts of one operation -- at once, from :meth:`add` --, when its window has closed
  (:meth:`due`; also from :meth:`add` if a record for it arrives after its window closed and
  before :meth:`due` ran), on shutdown (:meth:`drain`), or on revoke (:meth:`drain_partitions`).
  Neither ``adds`` nor ``removes`` of a batch ever exceeds ``max_contacts``.
* **Order.** Batches of one address book carry a ``sequence`` increasing by one from 0, in the
  order they were emitted; the dispatcher sends them one at a time in that order, so a remove is
  never overtaken by an earlier add of the same contact. Batches of different address books are
  independent.
* **Across partitions.** One profile's records share a partition, but one email may belong to
  two profiles on two partitions: their records are then one contact, ordered by arrival (the
  interleaving in which this instance read them). That order exists only here; a new owner of
  one of the partitions reads its records again from the committed position without the others.
  So a revoke hands such a contact over whole (:func:`handover`): its newest open record decides
  who applies the contact's last transition, and the other side's older records are final at
  once. Newest on a partition kept: its revoked older records are *overtaken* -- the newer one
  is synced or dead-lettered here, after anything the older could do, or, if this instance dies
  first, read again from its own partition, committed below it until then -- and committing them
  keeps the new owner from applying them after it. Newest on a revoked partition: the new owner
  reads it again (its partition stays committed below it) and applies it, so the older records
  kept here are *yielded*: not sent any more (the revoke stops and awaits their operations as
  it does the revoked partitions'), and committed. Overtaken records stay out of the new owner's
  reach only if the revoked partition's commit passes them, i.e. when nothing below them there
  is still open at the end of the revoke. Otherwise (DotDigital too slow for the revoke bounds),
  and always for a partition *lost* (nothing of it can be committed; yielded records are stopped
  but a request already in the air is not awaited), the new owner re-applies older records and,
  not knowing the newer ones kept here, may leave the book in an older state until the contact's
  next transition. No order across partitions survives that: Kafka defines none, and only the
  commit carries anything from one owner to the next.
* Costs: :meth:`add` O(1) (dict operations; plus building the batch when one is emitted);
  :meth:`due` and :meth:`next_deadline` O(pending address books); the partition operations
  O(buffered records), :func:`handover` O(records given) -- they run on rebalances only.

Not thread-safe: call it from one thread (or one event loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from stream.clock import Clock
from stream.core.events import Action, Transition
from stream.core.offsets import RecordRef, TopicPartitionKey
from stream.settings import BatchingSettings

AddressBookKey: TypeAlias = tuple[str, int]
"""``(connector_id, address_book_id)``."""


class Trigger(StrEnum):
    """Why a batch was emitted (a metric label)."""

    FULL = "full"
    WINDOW = "window"
    SHUTDOWN = "shutdown"
    REVOKE = "revoke"
    # Buffered records passed the cap: waiting for windows to close would stall the consumer.
    PRESSURE = "pressure"


@dataclass(frozen=True, slots=True)
class Contact:
    """One contact of a batch: the winning transition and every record it stands for."""

    email: str
    transition: Transition
    winner: RecordRef
    refs: tuple[RecordRef, ...]
    """The winner and the records it superseded, in consumption order (the winner last)."""

    @property
    def action(self) -> Action:
        return self.transition.action

    @property
    def event_id(self) -> str:
        return self.transition.event_id


@dataclass(frozen=True, slots=True)
class Batch:
    """What to send to one address book: contacts to add and contacts to remove."""

    connector_id: str
    address_book_id: int
    window_start: float
    sequence: int
    adds: tuple[Contact, ...]
    removes: tuple[Contact, ...]
    trigger: Trigger

    @property
    def key(self) -> AddressBookKey:
        return (self.connector_id, self.address_book_id)

    @property
    def contact_count(self) -> int:
        return len(self.adds) + len(self.removes)

    @property
    def record_count(self) -> int:
        return sum(len(contact.refs) for contact in self.contacts())

    def contacts(self) -> Iterator[Contact]:
        yield from self.adds
        yield from self.removes

    def refs(self) -> Iterator[RecordRef]:
        """Every record this batch stands for (winners and superseded)."""
        for contact in self.contacts():
            yield from contact.refs


@dataclass(frozen=True, slots=True)
class Dropped:
    """What :meth:`Windower.drop_partitions` took out of the buffers.

    ``dropped``: records of the revoked partitions. Leave them open (the ledger forgets them on
    revoke); the partitions' new owner reads them again from the last committed offset.

    ``superseded``: records of partitions still owned whose contact's winning record was dropped.
    Finish them now: the newer record that replaces them is uncommitted in its partition, so its
    new owner will read and sync it; syncing the older state here could only overwrite that.
    """

    dropped: tuple[RecordRef, ...]
    superseded: tuple[RecordRef, ...]


class _Entry:
    __slots__ = ("refs", "transition", "winner")

    def __init__(self, transition: Transition, ref: RecordRef) -> None:
        self.transition = transition
        self.winner = ref
        self.refs = [ref]

    def contact(self) -> Contact:
        return Contact(
            email=self.transition.email,
            transition=self.transition,
            winner=self.winner,
            refs=tuple(self.refs),
        )


class _Pending:
    __slots__ = ("adds", "deadline", "entries", "index", "records", "removes")

    def __init__(self, index: int, deadline: float) -> None:
        self.index = index  # wall-clock window number since the epoch (for window_start)
        self.deadline = deadline  # clock.monotonic() time at which the window closes
        self.entries: dict[str, _Entry] = {}
        self.adds = 0
        self.removes = 0
        self.records = 0

    def count(self, action: Action, delta: int) -> None:
        if action is Action.ADD:
            self.adds += delta
        else:
            self.removes += delta


class Windower:
    """Pending batches of every address book. See the module docstring for the contract."""

    def __init__(self, clock: Clock, *, window_seconds: float, max_contacts: int) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be greater than 0")
        if max_contacts < 1:
            raise ValueError("max_contacts must be at least 1")
        self._clock = clock
        self._window_seconds = float(window_seconds)
        self._max_contacts = max_contacts
        self._pending: dict[AddressBookKey, _Pending] = {}
        self._sequences: dict[AddressBookKey, int] = {}
        self._buffered = 0

    @classmethod
    def from_settings(cls, clock: Clock, settings: BatchingSettings) -> Windower:
        return cls(
            clock, window_seconds=settings.window_seconds, max_contacts=settings.max_contacts
        )

    # --- state -----------------------------------------------------------------------------

    @property
    def buffered_records(self) -> int:
        """Records held in pending batches (superseded ones included), for backpressure."""
        return self._buffered

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    def window_start(self, now: float) -> float:
        return self._index(now) * self._window_seconds

    def next_deadline(self) -> float | None:
        """``clock.monotonic()`` time at which the earliest pending window closes; ``None`` if
        nothing pends."""
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    # --- records in ------------------------------------------------------------------------

    def add(self, transition: Transition, ref: RecordRef) -> list[Batch]:
        """Buffer one record; return the batches this emits (usually none)."""
        now = self._clock.monotonic()
        key = (transition.connector_id, transition.address_book_id)
        emitted: list[Batch] = []
        pending = self._pending.get(key)
        if pending is not None and pending.deadline <= now:
            # Its window closed and due() has not run yet: close it now rather than let a record
            # of the new window ride in an old batch.
            emitted.append(self._emit_all(key, pending, Trigger.WINDOW))
            pending = None
        if pending is None:
            pending = self._pending[key] = self._open(now)

        entry = pending.entries.get(transition.email)
        if entry is None:
            pending.entries[transition.email] = _Entry(transition, ref)
            pending.count(transition.action, +1)
        else:
            pending.count(entry.transition.action, -1)
            pending.count(transition.action, +1)
            entry.transition = transition
            entry.winner = ref
            entry.refs.append(ref)
        pending.records += 1
        self._buffered += 1

        if pending.adds >= self._max_contacts or pending.removes >= self._max_contacts:
            emitted.append(self._emit_all(key, pending, Trigger.FULL))
        return emitted

    # --- batches out -----------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[Batch]:
        """Emit every pending batch whose window has closed by ``now`` (``clock.monotonic()``
        time; default: the clock's)."""
        if now is None:
            now = self._clock.monotonic()
        closed = [(key, p) for key, p in self._pending.items() if p.deadline <= now]
        return [self._emit_all(key, pending, Trigger.WINDOW) for key, pending in closed]

    def drain(self, trigger: Trigger = Trigger.SHUTDOWN) -> list[Batch]:
        """Emit every pending batch (shutdown, backpressure); the windower is empty afterwards."""
        pending = list(self._pending.items())
        return [self._emit_all(key, p, trigger) for key, p in pending]

    def drain_partitions(self, partitions: Collection[TopicPartitionKey]) -> list[Batch]:
        """Emit now the contacts holding any record of ``partitions`` (revoke, flush in time).

        Other contacts stay pending in their windows. A contact is taken whole (all its refs),
        so records of partitions still owned may leave early with it; that only makes a batch
        smaller. What cannot be synced before the revoke deadline is the dispatcher's to abandon.
        """
        if not partitions:
            return []
        emitted: list[Batch] = []
        for key, pending in list(self._pending.items()):
            taken = [
                entry
                for entry in pending.entries.values()
                if any(ref.tp in partitions for ref in entry.refs)
            ]
            if not taken:
                continue
            if len(taken) == len(pending.entries):
                emitted.append(self._emit_all(key, pending, Trigger.REVOKE))
                continue
            for entry in taken:
                self._remove_entry(pending, entry)
            emitted.append(self._batch(key, pending.index, taken, Trigger.REVOKE))
        return emitted

    def drop_partitions(self, partitions: Collection[TopicPartitionKey]) -> Dropped:
        """Take the records of ``partitions`` out of the buffers, unsent (revoke).

        A contact whose winning record is in ``partitions`` is removed whole; its records from
        other partitions come back as ``superseded`` (see :class:`Dropped`). A contact whose
        winner stays keeps it and loses only the revoked superseded records (a clean revoke
        finished them first, see :func:`handover`). (One profile's records share a partition,
        so mixed contacts need two profiles with one email.)
        """
        dropped: list[RecordRef] = []
        superseded: list[RecordRef] = []
        if not partitions:
            return Dropped((), ())
        for key, pending in list(self._pending.items()):
            for entry in list(pending.entries.values()):
                if not any(ref.tp in partitions for ref in entry.refs):
                    continue
                if entry.winner.tp in partitions:
                    self._remove_entry(pending, entry)
                    for ref in entry.refs:
                        (dropped if ref.tp in partitions else superseded).append(ref)
                    continue
                kept = [ref for ref in entry.refs if ref.tp not in partitions]
                dropped.extend(ref for ref in entry.refs if ref.tp in partitions)
                lost = len(entry.refs) - len(kept)
                entry.refs = kept
                pending.records -= lost
                self._buffered -= lost
            if not pending.entries:
                del self._pending[key]
        return Dropped(tuple(dropped), tuple(superseded))

    def pending_contacts(self) -> Iterator[tuple[AddressBookKey, Contact]]:
        """The contacts waiting in windows, with their address book (newer than every batch
        already emitted for it)."""
        for key, pending in self._pending.items():
            for entry in pending.entries.values():
                yield key, entry.contact()

    # --- internals -------------------------------------------------------------------------

    def _index(self, now: float) -> int:
        return math.floor(now / self._window_seconds)

    def _open(self, monotonic_now: float) -> _Pending:
        wall = self._clock.time()
        index = self._index(wall)
        # In (0, window_seconds]: a batch opened just after a boundary waits a whole window.
        left = (index + 1) * self._window_seconds - wall
        return _Pending(index, monotonic_now + left)

    def _remove_entry(self, pending: _Pending, entry: _Entry) -> None:
        del pending.entries[entry.transition.email]
        pending.count(entry.transition.action, -1)
        pending.records -= len(entry.refs)
        self._buffered -= len(entry.refs)

    def _emit_all(self, key: AddressBookKey, pending: _Pending, trigger: Trigger) -> Batch:
        del self._pending[key]
        self._buffered -= pending.records
        return self._batch(key, pending.index, pending.entries.values(), trigger)

    def _batch(
        self,
        key: AddressBookKey,
        index: int,
        entries: Collection[_Entry],
        trigger: Trigger,
    ) -> Batch:
        sequence = self._sequences.get(key, 0)
        self._sequences[key] = sequence + 1
        adds: list[Contact] = []
        removes: list[Contact] = []
        for entry in entries:
            (adds if entry.transition.action is Action.ADD else removes).append(entry.contact())
        return Batch(
            connector_id=key[0],
            address_book_id=key[1],
            window_start=index * self._window_seconds,
            sequence=sequence,
            adds=tuple(adds),
            removes=tuple(removes),
            trigger=trigger,
        )


@dataclass(frozen=True, slots=True)
class Handover:
    """Records made final by a revoke, beyond its own partitions' (see :func:`handover`).

    ``overtaken``: open records of the revoked partitions whose contact's newest open record is
    on a partition kept. ``yielded``: open records of partitions kept whose contact's newest open
    record is on a revoked partition; their operations must not send them any more.
    """

    overtaken: tuple[RecordRef, ...]
    yielded: tuple[RecordRef, ...]


def handover(
    contacts: Iterable[tuple[AddressBookKey, Contact]],
    partitions: Collection[TopicPartitionKey],
    is_open: Callable[[RecordRef], bool],
) -> Handover:
    """Split the contacts whose open records span revoked and kept partitions; see "Across
    partitions" above.

    ``contacts`` in arrival order per address book: the batches not yet done in the order they
    were emitted, then :meth:`Windower.pending_contacts`. Records of one address book and email
    are one contact's, newest last.
    """
    records: dict[tuple[str, int, str], list[RecordRef]] = {}
    for (connector_id, address_book_id), contact in contacts:
        key = (connector_id, address_book_id, contact.email)
        for ref in contact.refs:
            if is_open(ref):
                records.setdefault(key, []).append(ref)
    overtaken: list[RecordRef] = []
    yielded: list[RecordRef] = []
    for refs in records.values():
        newest_revoked = refs[-1].tp in partitions
        for ref in refs[:-1]:
            if (ref.tp in partitions) != newest_revoked:
                (yielded if newest_revoked else overtaken).append(ref)
    return Handover(tuple(overtaken), tuple(yielded))
