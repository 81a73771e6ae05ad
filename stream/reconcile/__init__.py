"""``ddsync reconcile``: compare each address book with what the outcomes topic says it should
hold, and repair the difference on request.

Contract:

* **Expected membership** is the outcomes topic read to the end offsets it has when the run
  starts (:func:`stream.kafka.outcomes.read_outcomes`), each contact's latest outcome deciding
  (:mod:`stream.reconcile.drift`). Run it while the stream is caught up: an outcome decided
  during the run is not seen.
* **Actual membership** is the book's members, paged from DotDigital
  (``GET /contacts/v3?~listId=``, 5,000 a page), through the connector's client: its rate
  limits, retries and region. Cost per book of N members: 1 call for the book's size and
  ceil(N / 5,000) pages; a repair adds ceil(missing / 1,000) imports and ceil(unexpected /
  1,000) bulk removals (each polled until done), and no contact look-up (the pages gave the
  ids).
* **Books in scope**: every (connector, book) the outcomes name, narrowed by ``--connector``
  and ``--address-book``; a book named by ``--address-book`` that no outcome names is listed
  too (all its members unmanaged).
* **Repair** (``--repair``) imports the missing and removes the unexpected (and the unmanaged,
  with ``--include-unmanaged``) and records each repaired contact's outcome on the outcomes
  topic (``origin`` ``reconcile``), acknowledged before the run ends. A connector in shadow mode
  is never repaired: its drift is what it would change. A contact DotDigital rejects, or an
  operation that fails through its retry budget, is reported and leaves the run's status at 1;
  it is not dead-lettered, since there is no source record to replay: the next run finds it
  again.
* Exit status (:mod:`stream.exitcodes`): 0 every book in step (after the repair, with
  ``--repair``); 1 drift found and not repaired, or a repair failed; 2 usage; 3 Kafka or
  DotDigital unreachable.
"""
