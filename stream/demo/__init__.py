"""The demo and test stream: realistic transitions for ``ddsync demo``, benchmarks and chaos."""
