"""An endpoint's custom headers: what a customer may add to every delivery, and the check.

Customers put tokens and routing hints in headers (Postmark, Svix, Convoy and
Outpost allow it). The service owns the headers that frame and sign a
delivery, so those cannot be set; everything else must be a header that any
HTTP/1.1 server reads the same way. :func:`check_headers` is the rule, pure;
:data:`CustomHeaders` publishes exactly that rule in the OpenAPI document, so
that a client that keeps to the document is never refused.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic import Field as PydanticField

MAX_HEADERS = 20
MAX_TOTAL_BYTES = 4096
"""Names and values together, in bytes (they are ASCII): what :data:`VALUE_LIMITS` ensure."""
MAX_NAME_LENGTH = 64
VALUE_LIMITS = ((1, 4000), (2, 1984), (4, 960), (8, 448), (MAX_HEADERS, 140))
"""``(up to this many headers, each value at most this long)``: the more headers, the
shorter each, so that they never add up to more than ``MAX_TOTAL_BYTES``. Per header
and not as a sum, because the OpenAPI document can say it so (a JSON Schema cannot
bound a sum), and a client that keeps to the document is then never refused."""

# RFC 9110 section 5.6.2: token = 1*tchar.
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
TOKEN_PATTERN = rf"^{_TCHAR}+$"
# Visible ASCII, space and tab: never CR, LF or NUL (header injection), nor other
# controls or bytes past ASCII, which servers read differently. No leading or
# trailing whitespace (RFC 9110 section 5.5 strips it: the value would change).
VALUE_PATTERN = r"^(?:[!-~](?:[\t -~]*[!-~])?)?$"
_TOKEN = re.compile(TOKEN_PATTERN)
_VALUE = re.compile(VALUE_PATTERN)

RESERVED = frozenset(
    {"content-type", "content-length", "host", "user-agent", "connection", "transfer-encoding"}
)
RESERVED_PREFIX = "webhook-"


def _any_case(word: str) -> str:
    # Letters in either case; the reserved names have nothing else but "-".
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


# The published rule for names: a token, and none of the reserved ones in any case (a
# lookahead, which JSON Schema's regex dialect has; the check itself is ``check_name``).
NAME_PATTERN = (
    "^(?!(?:"
    + "|".join(_any_case(name) for name in sorted(RESERVED))
    + f")$|{_any_case(RESERVED_PREFIX)}){_TCHAR}+$"
)


class HeaderError(ValueError):
    """A refused header; ``name`` is the header (None: the set as a whole)."""

    def __init__(self, name: str | None, message: str) -> None:
        super().__init__(message if name is None else f"header {name!r} {message}")
        self.name = name


def reserved(name: str) -> bool:
    """Whether the service sets header ``name`` on every delivery itself."""
    lower = name.lower()
    return lower in RESERVED or lower.startswith(RESERVED_PREFIX)


def check_name(name: str) -> str:
    """``name`` if a customer may set it; HeaderError otherwise."""
    if not _TOKEN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise HeaderError(
            name,
            f"is not an HTTP header name of at most {MAX_NAME_LENGTH} RFC 9110 token characters",
        )
    if reserved(name):
        raise HeaderError(
            name,
            "is set by the service (content-type, content-length, host, user-agent,"
            f" connection, transfer-encoding and {RESERVED_PREFIX}* are reserved)",
        )
    return name


def check_value(name: str, value: str) -> str:
    """``value`` if it can be sent as header ``name`` unchanged; HeaderError otherwise."""
    if not _VALUE.fullmatch(value):
        raise HeaderError(
            name,
            "has a value with characters other than visible ASCII, space and tab"
            " (CR, LF and NUL are never allowed), or with spaces at either end",
        )
    return value


def value_limit(count: int) -> int:
    """The longest value each of ``count`` headers may have (see :data:`VALUE_LIMITS`)."""
    for most, limit in VALUE_LIMITS:
        if count <= most:
            return limit
    raise ValueError(f"more than {MAX_HEADERS} headers")


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` if every one may be sent with each delivery; HeaderError naming one otherwise."""
    if len(headers) > MAX_HEADERS:
        raise HeaderError(None, f"at most {MAX_HEADERS} headers")
    limit = value_limit(len(headers))
    for name, value in headers.items():
        check_name(name)
        check_value(name, value)
        if len(value) > limit:
            raise HeaderError(
                name,
                f"has a value longer than {limit} characters, the limit for"
                f" {len(headers)} headers (all of them together stay under {MAX_TOTAL_BYTES}"
                " bytes)",
            )
    return headers


_DESCRIPTION = (
    "Headers sent with every delivery to this endpoint, test events included: at most"
    f" {MAX_HEADERS}, names and values together under {MAX_TOTAL_BYTES} bytes: each value at"
    " most "
    + ", ".join(f"{limit} characters with up to {most}" for most, limit in VALUE_LIMITS)
    + f" headers. Names are RFC 9110 tokens of at most {MAX_NAME_LENGTH} characters;"
    " content-type, content-length, host, user-agent, connection, transfer-encoding and"
    " webhook-* are the service's own and refused in any case. Values are visible ASCII,"
    " space and tab, without spaces at either end."
)

CustomHeaders = Annotated[
    dict[
        Annotated[
            str,
            PydanticField(pattern=TOKEN_PATTERN, max_length=MAX_NAME_LENGTH),
            AfterValidator(check_name),
        ],
        Annotated[str, PydanticField(pattern=VALUE_PATTERN, max_length=VALUE_LIMITS[0][1])],
    ],
    PydanticField(max_length=MAX_HEADERS),
    AfterValidator(check_headers),
    # Published as what it is (pydantic would publish patternProperties, which let any
    # other name through): one branch per size of the set, its values' longest length.
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_HEADERS,
            "propertyNames": {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_LENGTH},
            "additionalProperties": {
                "type": "string",
                "pattern": VALUE_PATTERN,
                "maxLength": VALUE_LIMITS[0][1],
            },
            "anyOf": [
                {
                    "maxProperties": most,
                    "additionalProperties": {"type": "string", "maxLength": limit},
                }
                for most, limit in VALUE_LIMITS
            ],
            "description": _DESCRIPTION,
            "examples": [{"Authorization": "Bearer 8c1f0b5e", "X-Tenant": "acme"}],
        }
    ),
]
"""The ``headers`` field of the endpoint schemas."""
