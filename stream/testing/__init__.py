"""Test doubles ddsync's own tests use, shipped for users' tests of code built on ddsync.

* :class:`FakeClock`: time that moves only when told (:mod:`stream.clock`).
* :class:`MemoryBroker`: an in-memory Kafka behind the backend protocols of
  :mod:`stream.kafka.backend`, held to the same contract suite as the confluent adapters.
* :class:`MockTransport`: a DotDigital transport that answers from a function
  (:mod:`stream.dotdigital.transport`), with :func:`json_response` to build answers.
* :func:`in_process_sandbox`: the sandbox (a local DotDigital) and a :class:`SandboxTransport`
  that reaches it without a socket (:mod:`stream.sandbox.transport`).

This is the one place these are exported for outside use; ddsync's code imports them from
their own modules.
"""

from stream.clock import FakeClock
from stream.dotdigital.transport import MockTransport, Request, Response, json_response
from stream.kafka.memory import MemoryBroker
from stream.sandbox.transport import SandboxTransport, in_process_sandbox

__all__ = [
    "FakeClock",
    "MemoryBroker",
    "MockTransport",
    "Request",
    "Response",
    "SandboxTransport",
    "in_process_sandbox",
    "json_response",
]
