"""The Kafka edge: what ddsync uses of a Kafka client (backend protocols), confluent-kafka's
implementation of them and an in-memory broker's (tests), client configuration, the consumer
thread, the dead-letter producer, topics, lag and the broker checks."""
