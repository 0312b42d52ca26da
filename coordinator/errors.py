"""barnraise's exception tree.

    BarnraiseError            anything we raise on purpose; the CLI prints it as one line
    ├── ConfigError           bad user input: paths, flags, datasets, manifests (exit code 2)
    ├── ProtocolError         a remote party sent something invalid (size, dtype, shape, values)
    ├── AuthError             a signature, token or membership check failed
    ├── IntegrityError        content does not match its hash (shard, state, manifest)
    └── PeerUnavailable       a remote party did not answer in time or could not be reached
        └── StreamClosed      the connection ended early (a transport fault, not misbehaviour)

Catch these only where tolerating the fault is the design (drop a peer, retry a source, close a
round); everything else reaches the CLI, which turns it into a message and an exit code.
"""


class BarnraiseError(Exception):
    """Base of every error barnraise raises on purpose."""

    exit_code = 1


class ConfigError(BarnraiseError):
    """The user gave something we cannot use; the message says what and how to fix it."""

    exit_code = 2


class ProtocolError(BarnraiseError):
    """A remote party broke the protocol: oversized, malformed or non-finite data."""


class AuthError(BarnraiseError):
    """A signature, token or membership check failed."""


class IntegrityError(BarnraiseError):
    """Content did not match the hash it was announced with."""


class PeerUnavailable(BarnraiseError):
    """A remote party did not answer in time or could not be reached."""


class StreamClosed(PeerUnavailable):
    """The stream ended before a whole message arrived: a transport fault, not a protocol offence."""
