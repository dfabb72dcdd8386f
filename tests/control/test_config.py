"""Every setting of the control path is a field of a scenario's `control` section."""

import dataclasses

import pytest

from twin import ScenarioError, parse_scenario
from twin.control import ControllerConfig, ControlParams
from twin.scenario import ControlModel, SiteModel


#: settings that describe the site's tariff, set in a scenario's `site` section
SITE_FIELDS = {"demand_charge_gbp_per_kw_month"}


@pytest.mark.parametrize("cls", [ControllerConfig, ControlParams])
def test_the_control_section_exposes_every_field_with_its_default(cls):
    model = ControlModel()
    for f in dataclasses.fields(cls):
        if f.name in SITE_FIELDS:
            assert f.name in SiteModel.model_fields and getattr(SiteModel(), f.name) == f.default
            continue
        assert f.name in ControlModel.model_fields, f"control.{f.name} is missing from scenarios"
        assert getattr(model, f.name) == f.default, f.name
    assert set(ControlModel.model_fields) | SITE_FIELDS == {f.name for c in (ControllerConfig, ControlParams)
                                                            for f in dataclasses.fields(c)}


def test_scenario_settings_reach_the_controller():
    sc = parse_scenario({"days": 1, "fleet": [{"count": 1}], "site": {"feeder_kw": 40},
                         "signals": {"slot_minutes": 15},
                         "control": {"call_timeout_s": 45, "escalate_within_s": 600, "start_penalty_gbp": 0.1}})
    s = sc.control_settings()
    assert (s.config.call_timeout_s, s.config.escalate_within_s, s.params.start_penalty_gbp) == (45, 600, 0.1)
    assert (s.slot_minutes, s.feeder_kw) == (15, 40)


def test_bad_control_values_are_rejected_with_the_field():
    with pytest.raises(ScenarioError, match=r"control.retry_max_s 10 is below retry_base_s 30|retry_max_s"):
        parse_scenario({"fleet": [{"count": 1}], "control": {"retry_max_s": 10}})
    with pytest.raises(ScenarioError, match=r"control.call_timeout_s: .*greater than 0"):
        parse_scenario({"fleet": [{"count": 1}], "control": {"call_timeout_s": 0}})
