"""Smartcar webhook deliveries: verification, the VERIFY challenge, de-duplication, readings.

Smartcar (payload ``meta.version`` 3.0/4.0) sends three event types:

* ``VERIFY`` (unsigned), when a webhook is set up: the endpoint answers 200 with
  ``{"challenge": hex(HMAC-SHA256(key=AMT, msg=challenge))}`` (:meth:`SmartcarWebhooks.answer_verify`);
* ``VEHICLE_STATE``: the vehicle's subscribed signals, turned into a :class:`VehicleReading`;
* ``VEHICLE_ERROR``: a signal could not be read (asleep, unreachable, ...); no reading.

Every delivery but VERIFY carries ``SC-Signature``, the hex HMAC-SHA256 of the raw body keyed by
the Application Management Token (AMT). A delivery seen before (same ``eventId`` or
``meta.deliveryId``) is dropped: :meth:`SmartcarWebhooks.parse` returns ``[]`` for it, as the
adapter protocol asks, so the route still answers 200 and Smartcar stops redelivering.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from twin.oem import VehicleReading, WebhookRejected

__all__ = ["SIGNATURE_HEADER", "SmartcarWebhooks", "hash_challenge", "verify_signature"]

SIGNATURE_HEADER = "SC-Signature"
SOC_SIGNAL = "tractionbattery-stateofcharge"
CHARGING_SIGNAL = "charge-ischarging"
PLUGGED_SIGNAL = "charge-ischargingcableconnected"
_REMEMBER = 200_000


def hash_challenge(management_token: str, challenge: str) -> str:
    """The answer to a VERIFY challenge: hex HMAC-SHA256 of ``challenge`` keyed by the AMT."""
    return hmac.new(management_token.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def verify_signature(management_token: str, signature: str, body: bytes) -> bool:
    """Whether ``signature`` (hex) is the HMAC-SHA256 of the raw ``body`` keyed by the AMT."""
    expected = hmac.new(management_token.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.strip().lower().encode(), expected.encode())


class SmartcarWebhooks:
    """Receives one application's webhook deliveries (keyed by its Application Management Token)."""

    def __init__(self, management_token: str, remember: int = _REMEMBER) -> None:
        if not management_token:
            raise ValueError("the Application Management Token is required to verify deliveries")
        self._amt = management_token
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: deliveries by outcome (for KPIs and tests)
        self.stats = {"readings": 0, "duplicates": 0, "errors": 0, "verify": 0}

    def __repr__(self) -> str:
        return f"SmartcarWebhooks(seen={len(self._seen)})"

    def answer_verify(self, body: bytes) -> dict[str, str] | None:
        """The JSON body to answer a VERIFY delivery with, or None when ``body`` is no VERIFY."""
        data = _load(body)
        if data.get("eventType") != "VERIFY":
            return None
        challenge = _dict(data.get("data"), "data").get("challenge")
        if not isinstance(challenge, str) or not challenge:
            raise WebhookRejected("Smartcar VERIFY delivery without a challenge")
        self.stats["verify"] += 1
        return {"challenge": hash_challenge(self._amt, challenge)}

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[VehicleReading]:
        """The readings of a delivery; ``[]`` for VERIFY, VEHICLE_ERROR and deliveries already
        seen. Raises :class:`WebhookRejected` for a missing or wrong signature or a body that
        is not a Smartcar delivery."""
        signature = {k.lower(): v for k, v in headers.items()}.get(SIGNATURE_HEADER.lower())
        if signature:
            if not verify_signature(self._amt, signature, body):
                raise WebhookRejected(f"Smartcar webhook {SIGNATURE_HEADER} does not match its body")
            data = _load(body)
        else:
            data = _load(body)
            if data.get("eventType") != "VERIFY":
                raise WebhookRejected(f"Smartcar webhook without {SIGNATURE_HEADER} header")
        if "eventName" in data and "eventType" not in data:
            raise WebhookRejected("Smartcar webhook in the legacy v2.0 format, which this endpoint does not accept")
        event_type = data.get("eventType")
        if event_type == "VERIFY":
            return []  # answered with answer_verify; carries no reading
        if event_type not in ("VEHICLE_STATE", "VEHICLE_ERROR"):
            raise WebhookRejected(f"Smartcar webhook of unknown eventType {event_type!r}")
        ids = _ids(data)
        if any(i in self._seen for i in ids):
            self.stats["duplicates"] += 1
            return []
        if event_type == "VEHICLE_ERROR":
            readings: list[VehicleReading] = []
            self.stats["errors"] += 1
        else:
            readings = [_reading(data)]
            self.stats["readings"] += 1
        for i in ids:
            self._seen[i] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return readings


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        raise WebhookRejected("Smartcar webhook body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected("Smartcar webhook body is not a JSON object")
    return data


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookRejected(f"Smartcar webhook without an object {where}")
    return value


def _ids(data: dict[str, Any]) -> list[str]:
    """The ids a delivery is known by: its event and its delivery."""
    event_id = data.get("eventId")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookRejected("Smartcar webhook without an eventId")
    ids = [f"event:{event_id}"]
    delivery_id = _dict(data.get("meta"), "meta").get("deliveryId")
    if isinstance(delivery_id, str) and delivery_id:
        ids.append(f"delivery:{delivery_id}")
    return ids


def _reading(data: dict[str, Any]) -> VehicleReading:
    """The reading of a VEHICLE_STATE delivery."""
    payload = _dict(data.get("data"), "data")
    vehicle_id = _dict(payload.get("vehicle"), "data.vehicle").get("id")
    if not isinstance(vehicle_id, str) or not vehicle_id:
        raise WebhookRejected("Smartcar webhook without data.vehicle.id")
    signals = payload.get("signals")
    if not isinstance(signals, list):
        raise WebhookRejected("Smartcar webhook without a data.signals list")
    by_code = {s.get("code"): s for s in signals if isinstance(s, dict)}
    plugged, t_plugged = _boolean(by_code, PLUGGED_SIGNAL)
    charging, t_charging = _boolean(by_code, CHARGING_SIGNAL)
    soc, t_soc = _soc(by_code.get(SOC_SIGNAL))
    taken_at = min(t for t in (t_plugged, t_charging, t_soc) if t is not None)
    return VehicleReading(vehicle_id, taken_at, soc, plugged, charging)


def _boolean(by_code: dict[Any, dict[str, Any]], code: str) -> tuple[bool, datetime]:
    signal = by_code.get(code)
    if signal is None:
        raise WebhookRejected(f"Smartcar webhook without the {code} signal")
    body = signal.get("body")
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, bool):
        raise WebhookRejected(f"Smartcar webhook signal {code} has no boolean value")
    return value, _measured(signal, code)


def _soc(signal: dict[str, Any] | None) -> tuple[float | None, datetime | None]:
    """SoC as a fraction (signals report percent), or None when the car did not provide it."""
    if signal is None or not isinstance(signal.get("body"), dict):
        return None, None  # absent, or an error object instead of a body
    body = signal["body"]
    value = body.get("value", body.get("percentage"))  # documented in both shapes
    unit = body.get("unit", "percent")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WebhookRejected(f"Smartcar webhook signal {SOC_SIGNAL} has no numeric value")
    if unit != "percent" or not 0 <= value <= 100:
        raise WebhookRejected(f"Smartcar webhook signal {SOC_SIGNAL} is not a percentage 0..100 ({value!r} {unit!r})")
    return value / 100.0, _measured(signal, SOC_SIGNAL)


def _measured(signal: dict[str, Any], code: str) -> datetime:
    """When the car measured the signal: ``meta.oemUpdatedAt`` (ms), else ``meta.retrievedAt``."""
    meta = signal.get("meta")
    if isinstance(meta, dict):
        for key in ("oemUpdatedAt", "retrievedAt"):
            ms = meta.get(key)
            if isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0:
                try:
                    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)
                except (OverflowError, OSError, ValueError):
                    break
    raise WebhookRejected(f"Smartcar webhook signal {code} has no measurement time")
