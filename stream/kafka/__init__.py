"""The Kafka edge: what ddsync uses of a Kafka client (backend protocols) and confluent-kafka's
implementation of them, client configuration, the consumer thread, the dead-letter producer,
topics, lag and the broker checks."""
