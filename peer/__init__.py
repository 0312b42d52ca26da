"""The peer daemon and the command line: device fitting, local steps, codecs, averaging, outer
step, state sync, heartbeats."""
