"""ddsync benchmarks: `python -m benchmarks` (see __main__)."""
