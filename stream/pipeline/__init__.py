"""The running service: the processor that composes source, ingest, dispatch, outcomes and
rebalances on the event loop, one DotDigital client per connector, and the bounded shutdown."""
