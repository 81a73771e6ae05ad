"""stream.testing: the doubles a user's test imports, used as such a test would."""

from __future__ import annotations

import orjson

from stream.testing import FakeClock, MemoryBroker, MockTransport, Request, Response, json_response


def test_the_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    before = clock.monotonic()
    assert clock.monotonic() == before
    clock.advance(5)
    assert clock.monotonic() == before + 5


def test_a_record_produced_to_the_memory_broker_is_delivered_and_stored() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", partitions=1)
    producer = broker.producer({})
    delivered: list[int] = []
    producer.produce(
        "t", key=b"k", value=b"v", on_delivery=lambda error, record: delivered.append(record.offset)
    )
    producer.flush(1.0)
    assert delivered == [0]
    assert [(r.key, r.value) for r in broker.records("t", 0)] == [(b"k", b"v")]


async def test_the_mock_transport_answers_from_its_function_and_keeps_the_requests() -> None:
    def answer(request: Request) -> Response:
        return json_response(200, {"asked": request.method})

    transport = MockTransport(answer)
    request = Request("GET", "https://r1-api.dotdigital.com/v2/account-info", timeout=1.0)
    response = await transport.send(request)
    assert response.status == 200
    assert orjson.loads(response.body) == {"asked": "GET"}
    assert transport.requests == [request]
