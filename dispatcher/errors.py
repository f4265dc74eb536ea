"""The dispatcher's one error tree.

Foreign errors (asyncio, ssl, OSError, the HTTP parser's) are turned into these in one
place, the transport (``dispatcher.transport`` and its ``http1``), so delivery logic only
ever catches ours::

    DispatchError
     └── TransportError            the attempt got no usable HTTP response
          ├── ConnectError         DNS failure, connection refused, reset or closed early
          ├── AttemptTimeout       the attempt outran its timeout
          ├── TLSError             handshake or certificate verification failed
          ├── DestinationRefused   the SSRF guard refused the destination
          ├── InvalidHeader        a request header cannot be sent; nothing was sent
          └── InvalidResponse      what came back is not an HTTP/1.x response
               └── ResponseTooLarge   its header section, a header field or its body
                                      passed a limit (``dispatcher.http1``)

An HTTP response of any status is not an error here: classifying it is the
outcome policy's job. A response counts only once it has arrived whole,
within the limits and the timeout; the messages of these errors are what a
customer reads in the delivery log (``dispatcher.outcome`` prefixes each
with its kind), so they name what happened and never echo a header value.
"""

from __future__ import annotations

__all__ = [
    "AttemptTimeout",
    "ConnectError",
    "DestinationRefused",
    "DispatchError",
    "InvalidHeader",
    "InvalidResponse",
    "ResponseTooLarge",
    "TLSError",
    "TransportError",
]


class DispatchError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class TransportError(DispatchError):
    """The attempt got no usable HTTP response; it counts as a failed attempt."""


class ConnectError(TransportError):
    """No usable connection: DNS failure, refused, reset, or closed before the response ended."""


class AttemptTimeout(TransportError):
    """The whole attempt (DNS, connect, TLS, send, response) took longer than its timeout.

    The message is the timeout and how far the attempt got, e.g. ``15 s (no response)``.
    """


class TLSError(TransportError):
    """The TLS handshake failed, including certificate verification."""


class DestinationRefused(TransportError):
    """The SSRF guard refused the destination, so nothing was sent.

    Raised when every resolved address is refused by the address policy, when
    an IP-literal host is refused, or when the URL's scheme is not allowed.
    """


class InvalidHeader(TransportError):
    """A request header cannot be sent as given, so nothing was sent.

    A line break or NUL in a name or value (it would inject headers), a name
    that is not an HTTP token, a character outside Latin-1, or a header the
    transport owns (``Host``, ``Content-Length``, ``Transfer-Encoding``).
    """


class InvalidResponse(TransportError):
    """The receiver's bytes are not an HTTP/1.x response the parser accepts."""


class ResponseTooLarge(InvalidResponse):
    """A part of the response passed its limit; the connection was closed at once.

    The header section (64 KiB, interim responses included), one header field
    (8 KiB), the number of header fields (128), or the body (64 KiB).
    """
