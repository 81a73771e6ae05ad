"""The running service: the processor that wires source, windows, dispatch and dead letters on
the event loop, one DotDigital client per connector, and the bounded shutdown."""
