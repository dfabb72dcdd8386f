"""chargetwin: smart EV charging through OEM cloud APIs.

The one entry point analysts need::

    import twin
    result = twin.simulate("scenarios/home_agile.yaml", policy="uncontrolled", seed=1)
    result.kpis            # dict of KPIs (units in the names)
    result.sessions        # one row per plug-in session
    result.timeseries      # one row per settlement slot
    result.events          # plug-ins, unplugs, telemetry, commands and their results

See :mod:`twin.results` for the columns, :mod:`twin.scenario` for scenario files.
"""

from twin.results import KPI_DESCRIPTIONS, SimulationResult
from twin.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from twin.sim.run import simulate

__all__ = [
    "simulate",
    "load_scenario",
    "parse_scenario",
    "Scenario",
    "ScenarioError",
    "SimulationResult",
    "KPI_DESCRIPTIONS",
]
