"""The confluent-kafka edge: client configuration, the consumer thread, the dead-letter producer,
topics, lag and the broker checks."""
