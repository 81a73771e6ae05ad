"""``ddsync replay``: re-produce chosen dead-letter records to their source topic.

An operator fixes what made records fail (a password, an address book, a bug) and then replays
them: each chosen dead-letter record's original key and value go back, unchanged, to the topic
they came from (header ``ddsync.source_topic``), where ddsync consumes them like new records.

Contract:

* Choice: :class:`ReplayFilter` keeps records whose reason, connector, address book and source
  topic are each among the given values (an empty set accepts anything). Records it rejects are
  *skipped by filter*.
* Guard: a chosen record whose ``ddsync.replay_count`` has reached ``max_replays`` is *refused*
  (counted and logged, never produced), so a record that keeps failing cannot loop for ever.
* Malformed records (no or broken ``ddsync.*`` headers, or a source topic that is the dead-letter
  topic itself) are reported and skipped; they never stop the run.
* Never older (:func:`supersession`): a chosen record whose value is a transition is replayed only
  when no later transition of the same contact and book (connector, address book, email as
  :mod:`stream.core.events` normalises it) follows it in its source partition; otherwise it is
  *superseded* and skipped, so the last transition of each contact and book in partition order
  still wins. Of a record and its failed replay, or of two failed transitions, the latest in
  source order is the one replayed. When the records after it cannot be read (deleted by
  retention; in a compacted topic, or one whose ``cleanup.policy`` cannot be read, any offset
  without a record, as compaction and transaction markers look alike; a partition that ends
  before it, a topic or partition gone, not authorised) it is
  *unverifiable* and skipped, unless ``replay_unverifiable``: skipping may leave a book short of
  that transition, replaying may undo a newer one, and only the first is visible in the report.
  A value that is not a transition touches no book and is replayed unchecked.
* Cost: before producing, one read of the chosen dead-letter records (the plan) and one read of
  each source partition concerned, from its lowest failed offset to its end; before each batch
  of dead letters, what reached those partitions since (so a transition produced during the
  replay still supersedes). Memory holds one entry per distinct contact to replay, not the
  source's records.
* Where: a replayed record goes back to its source partition, after what the check read there
  (the original producer's partitioner may not be librdkafka's); to the partitioner only when
  that partition no longer exists. A transition produced to the source partition while one
  batch is being produced is not seen: a copy of that batch may then override it.
* A replayed record carries the original record's own headers plus ``ddsync.replay_count`` =
  previous + 1 and ``ddsync.replayed_reason`` = the reason of its dead letter
  (:func:`stream.core.deadletter_format.replay_headers`); no other ``ddsync.*`` header. The
  reason releases what the mass-removal guard held (:mod:`stream.core.removal_guard`).
* Offsets: the replay has its own consumer group. It starts at the group's committed offsets (the
  earliest offset when there are none) and stops at the end offsets captured when it starts, so
  it terminates while new dead letters keep arriving. Offsets are committed batch by batch and
  only after every record produced in the batch was acknowledged (acks=all, idempotent
  producer); a partition whose record failed to deliver is committed only up to that record.
  An interrupted replay therefore resumes where it stopped: nothing is lost, and nothing is
  replayed twice except what was produced but not yet committed when it died (at-least-once).
  Skipped, refused, malformed, superseded and unverifiable records are committed past like
  replayed ones: a group's committed offset means "this replay has decided about everything
  before it".
* Dry run: the same decisions (the source partitions are read too), nothing produced and
  nothing committed.
* Reports never hold record values or error messages (either may be personal data); keys
  (profile ids), reasons, error codes and positions are enough to act on.
* Progress: after each batch consumed the run hands a :class:`ReplayProgress` to its
  ``on_progress`` callback; :class:`~stream.progress.ProgressReporter` shows it (a bar on a
  terminal, a line every few seconds otherwise) and :func:`summary_json` is the report as one
  JSON object.

The pure decisions are :mod:`stream.replay.decide`, what the operator sees
:mod:`stream.replay.report`; :class:`stream.replay.runner.Replayer` is the thin Kafka edge around
them.
"""
