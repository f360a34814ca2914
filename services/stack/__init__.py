"""The native stack: embedded infrastructure, Envoy and the MACP services as supervised processes.

`macp up` (up.py) and the test suite (through infra.py) start the same real parts the same way;
process.py owns how any child process is started, watched and stopped.
"""
