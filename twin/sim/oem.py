"""SimulatedOEM: an OEM cloud over the simulated cars, implementing :class:`twin.oem.OEMAdapter`.

The controller reaches simulated cars only through this head, exactly as it reaches real cars
through ``adapters/<oem>/``. Its behaviour comes from the scenario's OEM profile.
"""

from __future__ import annotations

from collections.abc import Callable

from twin.oem import UnknownVehicle, VehicleReading
from twin.scenario import OEMProfile
from twin.sim.clock import SimClock
from twin.sim.world import Car, World

__all__ = ["SimulatedOEM"]


class SimulatedOEM:
    """The cloud of one OEM profile, serving the cars assigned to it."""

    def __init__(self, name: str, profile: OEMProfile, world: World, clock: SimClock, cars: list[Car]) -> None:
        self.name = name
        self.profile = profile
        self.pushes_telemetry = profile.push
        self._world = world
        self._clock = clock
        self._cars = {c.vehicle_id: c for c in cars}
        self._sinks: list[Callable[[VehicleReading], None]] = []
        if profile.push:
            world.listeners.append(self._on_plug_change)

    # -- OEMAdapter ---------------------------------------------------------------------------

    async def read(self, vehicle_id: str) -> VehicleReading:
        car = self._car(vehicle_id)
        return self._reading(car, self._clock.seconds)

    async def start_charging(self, vehicle_id: str) -> None:
        self._world.start(self._car(vehicle_id), self._clock.seconds)

    async def stop_charging(self, vehicle_id: str) -> None:
        self._world.stop(self._car(vehicle_id), self._clock.seconds)

    async def wake(self, vehicle_id: str) -> None:
        self._car(vehicle_id)

    def subscribe(self, sink: Callable[[VehicleReading], None]) -> None:
        self._sinks.append(sink)

    # -- internals ----------------------------------------------------------------------------

    def _car(self, vehicle_id: str) -> Car:
        try:
            return self._cars[vehicle_id]
        except KeyError:
            raise UnknownVehicle(vehicle_id, f"not a vehicle of OEM {self.name}") from None

    def _reading(self, car: Car, t: float) -> VehicleReading:
        soc, plugged, charging = self._world.state(car, t)
        return VehicleReading(car.vehicle_id, self._clock.at(t), soc, plugged, charging)

    def _on_plug_change(self, car: Car, t: float) -> None:
        if car.vehicle_id not in self._cars or not self._sinks:
            return
        reading = self._reading(car, t)
        for sink in self._sinks:
            self._clock.call_later(self.profile.push_delay_s, lambda s=sink: s(reading))
