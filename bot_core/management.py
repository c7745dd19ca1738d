"""``bot-core telnyx sync``: wire the Telnyx account to the bot through Telnyx's V2 management API.

For each profile with a ``telnyx_profile_id``: the messaging profile's ``webhook_url`` becomes
``{public_url}/webhooks/telnyx``, its ``webhook_failover_url`` ``[telnyx]
webhook_failover_url`` (left alone when unset), its ``webhook_api_version`` the format bot-core
can verify ("2" with a ``[telnyx] public_key``, else "1"), and each of the profile's numbers
is assigned to it. Everything is read first (GET), the differences become a :class:`Plan`, and
only those are written (PATCH), so a second run changes nothing.

The paths are those of Telnyx's OpenAPI spec (team-telnyx/openapi, ``openapi/spec3.yml``):
``GET``/``PATCH /messaging_profiles/{id}``, ``GET /phone_numbers?filter[phone_number]=...`` to
find a number's id, and ``GET``/``PATCH /phone_numbers/{id}/messaging`` with
``messaging_profile_id`` in the body (``/messaging_phone_numbers/{number}`` left the spec in
2020). The spec's ``{id}`` is Telnyx's id of the phone number, not the number itself: that is
our reading of "Identifies the type of resource", and why each number is looked up first.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .config import Config
from .errors import BotError

WEBHOOK_PATH = "/webhooks/telnyx"


class ManagementError(BotError):
    """Telnyx refused a management call, or could not be reached; the message says it plainly."""


@dataclass(frozen=True)
class Change:
    """One PATCH to make: ``fields`` maps each field to (what Telnyx has, what it should be)."""

    what: str  # "profile support" or "number +13125550100"
    path: str
    fields: dict[str, tuple[Any, Any]]

    @property
    def body(self) -> dict[str, Any]:
        return {name: new for name, (_, new) in self.fields.items()}


@dataclass
class Plan:
    """What sync would change, what already matches, and what it left out and why."""

    changes: list[Change] = field(default_factory=list)
    matching: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Management:
    """A client of Telnyx's V2 management API, authenticated with ``[telnyx] api_key``."""

    def __init__(self, config: Config, transport: httpx.BaseTransport | None = None) -> None:
        if not config.telnyx.api_key:
            raise ManagementError("[telnyx] api_key is not set: the management API needs an API key "
                                  "(Telnyx portal > API Keys)")  # fmt: skip
        self.config = config
        self.base = config.telnyx.management_base
        self.http = httpx.Client(
            base_url=self.base, transport=transport, timeout=config.sending.timeout,
            headers={"authorization": f"Bearer {config.telnyx.api_key}", "user-agent": "bot-core"},
        )  # fmt: skip

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Management:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plan(self) -> Plan:
        """Read the account and compare it with the config."""
        config = self.config
        if not config.bot.public_url:
            raise ManagementError("[bot] public_url is not set: sync points Telnyx's webhooks at "
                                  f"{{public_url}}{WEBHOOK_PATH}")  # fmt: skip
        wanted = {"webhook_url": config.bot.public_url + WEBHOOK_PATH,
                  "webhook_api_version": "2" if config.telnyx.public_key else "1"}  # fmt: skip
        if config.telnyx.webhook_failover_url:
            wanted["webhook_failover_url"] = config.telnyx.webhook_failover_url
        plan = Plan()
        for profile in config.profiles.values():
            if not profile.telnyx_profile_id:
                plan.skipped.append(f"profile {profile.name}: no telnyx_profile_id in the config")
                continue
            path = f"/messaging_profiles/{quote(profile.telnyx_profile_id, safe='')}"
            current = self._data("GET", path, hint=f"profiles.{profile.name}.telnyx_profile_id is not the id of a "
                                 "messaging profile of this Telnyx account (Telnyx portal > Messaging)")  # fmt: skip
            secret = current.get("v1_secret")
            if isinstance(secret, str) and secret and not hmac.compare_digest(secret, profile.secret):
                plan.warnings.append(f"profile {profile.name}: its secret in the config is not Telnyx's v1_secret "
                                     "for this profile: V1 webhooks and sends will be refused")  # fmt: skip
            self._compare(plan, f"profile {profile.name}", path, current, wanted)
            for number in profile.numbers:
                number_path = f"/phone_numbers/{quote(self._number_id(number, profile.name), safe='')}/messaging"
                current = self._data("GET", number_path, hint=f"Telnyx has no messaging settings for {number}")
                self._compare(plan, f"number {number}", number_path, current,
                              {"messaging_profile_id": profile.telnyx_profile_id})  # fmt: skip
        return plan

    def _number_id(self, number: str, profile: str) -> str:
        """Telnyx's id of ``number``: the spec's filter matches digits, so the exact number is picked."""
        records = self._request("GET", "/phone_numbers", params={"filter[phone_number]": number.lstrip("+")})
        found = records.get("data") if isinstance(records, dict) else None
        for record in found if isinstance(found, list) else ():
            if isinstance(record, dict) and record.get("phone_number") == number and record.get("id") is not None:
                return str(record["id"])
        raise ManagementError(f"{number} (profiles.{profile}.numbers) is not a phone number of this Telnyx account: "
                              f"GET /phone_numbers?filter[phone_number]={number.lstrip('+')} found no such number; "
                              "buy or port it, or remove it from the config")  # fmt: skip

    def apply(self, plan: Plan) -> None:
        """Make the plan's changes, in order; stops at the first refusal (running again resumes)."""
        for change in plan.changes:
            self._data("PATCH", change.path, change.body)

    @staticmethod
    def _compare(plan: Plan, what: str, path: str, current: dict[str, Any], wanted: dict[str, Any]) -> None:
        fields = {k: (current.get(k), v) for k, v in wanted.items() if current.get(k) != v}
        if fields:
            plan.changes.append(Change(what, path, fields))
        else:
            plan.matching.append(what)

    def _data(self, method: str, path: str, body: dict[str, Any] | None = None, *, hint: str | None = None
              ) -> dict[str, Any]:  # fmt: skip
        """The ``data`` record Telnyx answers; ``hint`` says what a 404 means for this call."""
        document = self._request(method, path, body, hint=hint)
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            raise ManagementError(f"Telnyx answered {method} {path} with something that is not a V2 record")
        return data

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 params: dict[str, str] | None = None, hint: str | None = None) -> Any:  # fmt: skip
        try:
            response = self.http.request(method, path, json=body, params=params)
        except httpx.TimeoutException:
            raise ManagementError(f"Telnyx did not answer {method} {path} in time ({self.base})") from None
        except httpx.TransportError as exc:
            raise ManagementError(f"cannot reach Telnyx at {self.base}: {type(exc).__name__}: {exc}") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code >= 300:
            raise ManagementError(f"Telnyx refused {method} {path}: {_plain(response, document, hint)}")
        return document


def _plain(response: httpx.Response, document: Any, hint_404: str | None = None) -> str:
    """Telnyx's V2 error in words: status, what it said, and what to do for the common ones."""
    words = f"{response.status_code} {response.reason_phrase}".strip()
    errors = document.get("errors") if isinstance(document, dict) else None
    for error in errors if isinstance(errors, list) else ():
        if isinstance(error, dict):
            detail = error.get("detail") or error.get("title")
            words += f": {detail}" if detail else ""
            words += f" (code {error['code']})" if error.get("code") else ""
    hint = {401: "check [telnyx] api_key", 403: "the API key may not manage messaging", 404: hint_404,
            429: "Telnyx is rate limiting: run sync again in a minute"}.get(response.status_code)  # fmt: skip
    return f"{words}; {hint}" if hint else words
