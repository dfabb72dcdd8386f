"""Smartcar webhook deliveries: SC-Signature verification, the VERIFY challenge, de-duplication
of deliveries seen before, and payloads turned into readings or rejected."""

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from adapters import smartcar
from adapters.smartcar import (
    SmartcarClient,
    SmartcarWebhooks,
    hash_challenge,
    verify_signature,
)
from twin.auth import AccountTokens, MemoryTokenStore
from twin.oem import WebhookRejected

FIXTURES = Path(smartcar.__file__).parent / "fixtures"
AMT = "amt-0f9e8d7c6b5a"
VID = "36ab27d0-fd9d-4455-823a-ce30af709ffc"


def payload(name="webhook_vehicle_state.json") -> dict:
    return json.loads((FIXTURES / name).read_bytes())


def signed(data: dict | bytes, key: str = AMT) -> tuple[dict[str, str], bytes]:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {"Content-Type": "application/json",
            "SC-Signature": hmac.new(key.encode(), body, hashlib.sha256).hexdigest()}, body


def test_a_vehicle_state_delivery_becomes_a_reading():
    receiver = SmartcarWebhooks(AMT)
    [reading] = receiver.parse(*signed(payload()))
    assert reading.vehicle_id == VID
    assert reading.soc == pytest.approx(0.75)  # percent in the signal, a fraction in the reading
    assert reading.plugged_in is True and reading.charging is True
    # meta.oemUpdatedAt (ms): when the car measured it
    assert reading.taken_at == datetime.fromtimestamp((1758668712404 - 4000) / 1000, tz=UTC)


def test_the_signature_header_name_is_case_insensitive():
    headers, body = signed(payload())
    assert SmartcarWebhooks(AMT).parse({"sc-signature": headers["SC-Signature"].upper()}, body)


def test_the_head_parses_deliveries_through_its_receiver():
    client = SmartcarClient(AccountTokens(MemoryTokenStore(), None, None), webhooks=SmartcarWebhooks(AMT),
                            transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    [reading] = client.parse_webhook(*signed(payload()))
    assert reading.soc == pytest.approx(0.75)
    without = SmartcarClient(AccountTokens(MemoryTokenStore(), None, None))
    with pytest.raises(WebhookRejected, match="not set up"):
        without.parse_webhook(*signed(payload()))


def test_a_bad_missing_or_foreign_signature_is_rejected():
    receiver = SmartcarWebhooks(AMT)
    headers, body = signed(payload())
    with pytest.raises(WebhookRejected, match="does not match"):
        receiver.parse(headers, body.replace(b"75", b"95"))
    with pytest.raises(WebhookRejected, match="without SC-Signature"):
        receiver.parse({"Content-Type": "application/json"}, body)
    with pytest.raises(WebhookRejected, match="does not match"):
        receiver.parse(*signed(payload(), key="another-application"))
    with pytest.raises(WebhookRejected, match="does not match"):
        receiver.parse({"SC-Signature": "not-hex"}, body)
    assert receiver.parse(headers, body)  # none of those was remembered


def test_a_replayed_delivery_is_dropped():
    receiver = SmartcarWebhooks(AMT)
    headers, body = signed(payload())
    assert len(receiver.parse(headers, body)) == 1
    assert receiver.parse(headers, body) == []  # the same delivery again
    again = payload()
    again["meta"]["deliveryId"] = "another-delivery"  # the same event redelivered
    assert receiver.parse(*signed(again)) == []
    other = payload()
    other["eventId"], other["meta"]["deliveryId"] = "another-event", "yet-another-delivery"
    assert len(receiver.parse(*signed(other))) == 1
    assert receiver.stats["duplicates"] == 2


def test_the_verify_challenge_is_answered_with_its_hmac():
    receiver = SmartcarWebhooks(AMT)
    body = (FIXTURES / "webhook_verify.json").read_bytes()
    expected = hmac.new(AMT.encode(), b"3b6d3f1c9a0e4f7b", hashlib.sha256).hexdigest()
    assert receiver.answer_verify(body) == {"challenge": expected} == {"challenge": hash_challenge(AMT, "3b6d3f1c9a0e4f7b")}
    assert receiver.parse({}, body) == []  # unsigned, and no reading
    assert receiver.answer_verify(signed(payload())[1]) is None
    broken = payload("webhook_verify.json")
    del broken["data"]["challenge"]
    with pytest.raises(WebhookRejected, match="challenge"):
        receiver.answer_verify(json.dumps(broken).encode())


def test_verify_signature_helper():
    headers, body = signed(b'{"eventId": "x"}')
    assert verify_signature(AMT, headers["SC-Signature"], body)
    assert not verify_signature(AMT, headers["SC-Signature"], body + b" ")


def test_a_vehicle_error_delivery_is_accepted_without_readings():
    receiver = SmartcarWebhooks(AMT)
    assert receiver.parse(*signed(payload("webhook_vehicle_error.json"))) == []
    assert receiver.stats["errors"] == 1


def test_a_soc_in_the_percentage_shape_is_read_too():
    data = payload()
    data["data"]["signals"][0]["body"] = {"percentage": 40}
    [reading] = SmartcarWebhooks(AMT).parse(*signed(data))
    assert reading.soc == pytest.approx(0.40)


def test_a_soc_signal_the_car_could_not_provide_gives_no_soc():
    data = payload()
    soc = data["data"]["signals"][0]
    del soc["body"]
    soc["error"] = {"type": "COMPATIBILITY", "code": "VEHICLE_NOT_CAPABLE"}
    [reading] = SmartcarWebhooks(AMT).parse(*signed(data))
    assert reading.soc is None and reading.plugged_in


def _without_signal(code):
    data = payload()
    data["data"]["signals"] = [s for s in data["data"]["signals"] if s["code"] != code]
    return data


def _with(path, value):
    data = payload()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize("body, match", [
    pytest.param(b"<html>oops</html>", "not JSON", id="html"),
    pytest.param(json.dumps(payload()).encode()[:-20], "not JSON", id="truncated"),
    pytest.param(b"[]", "not a JSON object", id="array"),
    pytest.param(_with(["data", "signals", 0, "body", "value"], 150), "0..100", id="soc-150"),
    pytest.param(_with(["data", "signals", 0, "body", "value"], "75"), "numeric", id="soc-string"),
    pytest.param(_with(["data", "signals", 0, "body", "unit"], "kWh"), "percentage", id="soc-other-unit"),
    pytest.param(_with(["data", "signals", 1, "body", "value"], "true"), "boolean", id="charging-string"),
    pytest.param(_without_signal("charge-ischargingcableconnected"), "charge-ischargingcableconnected",
                 id="no-plug-signal"),
    pytest.param(_with(["data", "signals", 2, "meta"], KeyError), "measurement time", id="no-signal-time"),
    pytest.param(_with(["data", "vehicle"], KeyError), "data.vehicle", id="no-vehicle"),
    pytest.param(_with(["data", "signals"], {}), "signals", id="signals-not-a-list"),
    pytest.param(_with(["eventId"], KeyError), "eventId", id="no-event-id"),
    pytest.param(_with(["eventType"], "SOMETHING_ELSE"), "eventType", id="unknown-event"),
    pytest.param(payload("webhook_legacy_v2.json"), "legacy", id="legacy-v2"),
])
def test_a_malformed_delivery_is_rejected_with_a_clear_message(body, match):
    receiver = SmartcarWebhooks(AMT)
    with pytest.raises(WebhookRejected, match=match):
        receiver.parse(*signed(body))


def test_a_receiver_needs_the_management_token():
    with pytest.raises(ValueError):
        SmartcarWebhooks("")
    assert AMT not in repr(SmartcarWebhooks(AMT))
