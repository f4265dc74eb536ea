"""Form fields in, the JSON API's own schemas out; every refusal beside the field it concerns.

A portal form is validated by the very models the API validates its JSON
with (``EndpointCreate`` and friends), so the portal accepts exactly what the
API accepts. What a model refuses comes back as :class:`FormErrors`: field
name to a sentence, which the template prints beside that field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from models.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


class FormErrors(Exception):
    """Refused fields: name to what is wrong with it, in words."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _sentence(message: str) -> str:
    # pydantic's "Value error, must be..." reads as a sentence without its prefix.
    message = message.removeprefix("Value error, ")
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


# Where pydantic's wording speaks of data rather than of the form: (field, error type) -> words.
PLAIN_WORDS = {
    ("events", "too_short"): "Tick at least one event type.",
}


def errors_of(exc: ValidationError | InvalidInput) -> dict[str, str]:
    """The refused fields of a model's validation, or of a domain check, by field name."""
    if isinstance(exc, InvalidInput):
        return {str(exc.loc[-1]): _sentence(exc.message)}
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "form"
        words = PLAIN_WORDS.get((field, error["type"])) or _sentence(error["msg"])
        if field == "headers" and len(error["loc"]) > 1:  # which header, then why
            words = f"{error['loc'][1]}: {words[:1].lower()}{words[1:]}"
        errors.setdefault(field, words)
    return errors


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``; :class:`FormErrors` naming each refused field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FormErrors(errors_of(exc)) from None


def text(form: FormData, name: str) -> str:
    """A text field, stripped of surrounding blanks (browsers keep what users paste)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def number(form: FormData, name: str, *, errors: dict[str, str]) -> float | None:
    """An optional number field: None when blank; a refusal in ``errors`` if not a number."""
    raw = text(form, name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        errors[name] = f"Must be a number, such as 50 or 2.5 (got {raw!r})."
        return None


def choices(form: FormData, name: str) -> list[str]:
    """Every value of a group of checkboxes that was ticked."""
    return [v for v in form.getlist(name) if isinstance(v, str)]


def header_lines(form: FormData, name: str, *, errors: dict[str, str]) -> dict[str, str]:
    """A text area of ``Name: value`` lines as headers; a refusal in ``errors`` naming the line."""
    raw = form.get(name)
    headers: dict[str, str] = {}
    for number, line in enumerate((raw if isinstance(raw, str) else "").splitlines(), 1):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon or not key.strip():
            errors[name] = f"Line {number}: write each header as Name: value."
            return headers
        if key.strip() in headers:
            errors[name] = f"Line {number}: {key.strip()} is given twice."
            return headers
        headers[key.strip()] = value.strip()
    return headers


def headers_text(headers: dict[str, str] | None) -> str:
    """Headers as the text area shows them, one ``Name: value`` a line."""
    return "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())


def endpoint_fields(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """The endpoint form as the API's body, and the fields refused before any model sees them."""
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "url": text(form, "url"),
        "events": choices(form, "events"),
        "rate_limit": number(form, "rate_limit", errors=errors),
        "headers": header_lines(form, "headers", errors=errors),
    }
    return data, errors
