"""Schemathesis hooks for the fuzz run (tests/tests/e2e/fuzz.rs).

The run acts as several accounts of one role, taking turns (`FUZZ_TOKENS`, comma
separated): a user's writes are rate limited, and one account writing as fast as a
fuzzer would spend most of the run on 429s.

Cases generated as *valid* are made to keep two kinds of rule JSON Schema cannot
state, so that `positive_data_acceptance` tests what the schema can express; cases
generated as invalid are left as they are:

- one field depending on another, on the drop endpoints (written in the document's
  descriptions): `ends_at` is after `starts_at`, `max_per_user` at most `stock`. A
  change (PATCH) is checked against the drop as stored, which the fuzzer does not
  know: a valid change names both fields of a pair or neither;
- a list's `cursor` is a token the server issued with an earlier page, signed for
  that list and user (any other string is a 400, as API.md wants): the document
  gives its exact shape (`^[A-Za-z0-9_-]{60}$`), which a fuzzer can match but not
  sign, so a valid case asks for the first page (a string of another shape, e.g.
  empty, is invalid by the document and stays in the invalid cases);
- a product's `image_url` names a file uploaded earlier (`POST /v1/media`): the
  document gives its shape (`^/v1/media/<64 hex>.<png|jpg|webp|mp4|webm>$`), but
  the fuzzer has uploaded nothing, so a valid product names no image.

schemathesis.toml loads this file (`hooks = ...`), so the rules hold in every run
that uses the config, by hand or from the suite.
"""

import itertools
import os
import threading
from datetime import datetime, timedelta

import schemathesis

DROP_BODIES = {("POST", "/v1/drops"), ("PATCH", "/v1/drops/{drop_id}")}


def _parse(value):
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or meta.generation.mode.is_negative:
        return case
    if isinstance(case.query, dict):
        case.query.pop("cursor", None)
    if (case.operation.method.upper(), case.operation.path) == ("POST", "/v1/products") and isinstance(case.body, dict):
        case.body.pop("image_url", None)
    if (case.operation.method.upper(), case.operation.path) not in DROP_BODIES:
        return case
    body = case.body
    if not isinstance(body, dict):
        return case
    if case.operation.method.upper() == "PATCH":
        for pair in (("starts_at", "ends_at"), ("stock", "max_per_user")):
            given = [field for field in pair if body.get(field) is not None]
            if len(given) == 1:
                body.pop(given[0])
    starts, ends = _parse(body.get("starts_at")), _parse(body.get("ends_at"))
    if starts is not None and ends is not None and ends <= starts:
        try:
            body["ends_at"] = (starts + timedelta(hours=1)).isoformat()
        except OverflowError:
            body["starts_at"], body["ends_at"] = body["ends_at"], body["starts_at"]
    stock, limit = body.get("stock"), body.get("max_per_user")
    number = (int, float)
    if isinstance(stock, number) and isinstance(limit, number) and limit > stock:
        body["max_per_user"] = stock
    return case


@schemathesis.auth()
class TakingTurns:
    def __init__(self):
        tokens = [t for t in os.environ.get("FUZZ_TOKENS", "").split(",") if t]
        self._next = itertools.cycle(tokens) if tokens else None
        self._lock = threading.Lock()

    def get(self, case, context):
        return "turns"

    def set(self, case, data, context):
        if self._next is None:
            return
        with self._lock:
            token = next(self._next)
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {token}"
