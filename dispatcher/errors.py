"""The dispatcher's one error tree.

Foreign errors (asyncio, ssl, OSError, the HTTP parser's) are turned into these in one
place, the transport, so delivery logic only ever catches ours::

    DispatchError
     └── TransportError          the attempt got no HTTP response
          ├── ConnectError       DNS failure, connection refused or reset, ...
          ├── AttemptTimeout     the attempt outran its timeout
          ├── TLSError           handshake or certificate verification failed
          └── DestinationRefused the SSRF guard refused the destination

An HTTP response of any status is not an error here: classifying it is the
outcome policy's job.
"""

from __future__ import annotations

__all__ = [
    "AttemptTimeout",
    "ConnectError",
    "DestinationRefused",
    "DispatchError",
    "TLSError",
    "TransportError",
]


class DispatchError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class TransportError(DispatchError):
    """The attempt got no HTTP response; it counts as a failed attempt."""


class ConnectError(TransportError):
    """No usable connection: DNS failure, refused, reset, or a broken response."""


class AttemptTimeout(TransportError):
    """The whole attempt (connect, send, response) took longer than its timeout."""


class TLSError(TransportError):
    """The TLS handshake failed, including certificate verification."""


class DestinationRefused(TransportError):
    """The SSRF guard refused the destination, so nothing was sent.

    Raised when every resolved address is refused by the address policy, when
    an IP-literal host is refused, or when the URL's scheme is not allowed.
    """
