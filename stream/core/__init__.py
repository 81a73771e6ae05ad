"""ddsync's pure core: the event contract, windows, open records, the breaker, suspensions and
the dead-letter format. Nothing here imports confluent_kafka, aiohttp or prometheus_client or
touches a file (``tests/unit/test_layers.py`` enforces it), so it is tested on a fake clock."""
