"""Server load: the live control server (``twin serve``) over a Smartcar emulator with many cars.

1. writes a scenario (one OEM profile ``api: smartcar``, push webhooks, modest latency, 2 h
   tokens; N cars on N/100 accounts, 2 days starting "now") into a temporary directory and
   serves it with ``twin emulate smartcar --speed 1 --webhook-url <server>/webhooks/smartcar``;
2. starts ``twin serve`` (not the demo: Fernet key, JWT secret, SQLite in the temporary
   directory, the Smartcar URLs and credentials pointing at the emulator, as
   tests/server/test_durability.py does);
3. registers the fleet: one user per account, each linked through ``/oem/smartcar/connect`` →
   the emulator's Connect (``user=<account>``) → ``/oem/smartcar/callback``, a bounded number
   at a time (registration throughput);
4. load: from a separate process, ``GET /vehicles/{id}/status`` at a fixed arrival rate (open
   loop) for ``--seconds``, random cars with their owner's token: latency p50/p90/p99/max (from
   the intended send time, so that a stalled generator or server is not hidden; the latency
   from the actual send is shown beside it), errors, achieved rate;
5. the server's OEM calls per car-hour: requests in the emulator's access log divided by
   vehicles × hours, over the load window and over everything after registration; and the same
   for the "steady state" calls only (without linking: the account's vehicle list, each car's
   attributes, each car's first reading, token calls), since a window right after registration
   is dominated by the tail of the first readings.

``--plug-ins SHARE`` makes that share of the cars plug in from 15 s after the emulator starts
(over ``--plug-in-minutes``), so that webhooks reach the server and the controller plans during
the run; by default no session starts for hours (the generated fleet plugs in from 15:00).

    python bench/server_load.py                 # 10,000 cars, 200 req/s, 30 s
    python bench/server_load.py --quick         # 500 cars, 10 s (smoke run)
    python bench/server_load.py --quick --seconds 30 --plug-ins 0.5 --plug-in-minutes 1
    python bench/server_load.py --vehicles 2000 --rate 400 --seconds 20 --keep   # keep the temp dir

Targets (the product's): p99 < 50 ms at 200 req/s with 10,000 vehicles; <= 1 OEM call per
car-hour. Exit status 0 unless the benchmark itself crashes (a missed target is reported, not
an error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
TWIN = str(Path(sys.executable).parent / "twin")
TARGET_P99_MS = 50.0
TARGET_CALLS_PER_CAR_HOUR = 1.0
CARS_PER_ACCOUNT = 100
PASSWORD = "a long benchmark password"
#: an OEM call in the emulator's uvicorn access log
OEM_CALL = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (/v2\.0/\S*|/oauth/token) HTTP/1\.1" (\d{3})')


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None):
        self.name, self.log = name, log
        self.handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        self.handle.flush()
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.handle.close()


def wait_until(check, timeout: float, what: str, proc: Process | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} ({last})")


def oem_calls(log: Path) -> dict[str, int]:
    """OEM calls in the emulator's access log so far: all, reads/commands under /v2.0, token."""
    text = log.read_text(errors="replace")
    counts = {"all": 0, "api": 0, "token": 0, "errors": 0}
    for m in OEM_CALL.finditer(text):
        counts["all"] += 1
        counts["token" if m.group(2) == "/oauth/token" else "api"] += 1
        counts["errors"] += m.group(3)[0] != "2"
    return counts


def repeat_calls(log: Path, since: int = 0) -> int:
    """OEM calls from byte ``since`` that are not part of linking a car: not the account's
    vehicle list, not a car's attributes (discovery), not a car's first reading (each newly
    registered car is read once), not a token exchange or refresh."""
    text = log.read_bytes().decode(errors="replace")
    read_before: set[str] = set()
    count = 0
    for m in OEM_CALL.finditer(text):
        method, path = m.group(1), m.group(2).split("?")[0]
        parts = path.split("/")  # '', 'v2.0', 'vehicles', id, ...
        first_read = False
        if method == "POST" and len(parts) == 5 and parts[4] == "batch":
            first_read = parts[3] not in read_before
            read_before.add(parts[3])
        linking = path == "/oauth/token" or path == "/v2.0/vehicles" or (method == "GET" and len(parts) == 4)
        if m.start() >= since and not (linking or first_read):
            count += 1
    return count


def endpoint_breakdown(log: Path, since: int = 0) -> dict[str, int]:
    """OEM calls by method and path template, from byte ``since`` of the log."""
    out: dict[str, int] = {}
    for m in OEM_CALL.finditer(log.read_bytes()[since:].decode(errors="replace")):
        path = re.sub(r"/vehicles/[^/?\s]+", "/vehicles/{id}", m.group(2).split("?")[0])
        key = f"{m.group(1)} {path}"
        out[key] = out.get(key, 0) + 1
    return out


# -- the scenario ------------------------------------------------------------------------------


def scenario_yaml(vehicles: int, start: datetime, plug_ins: float = 0.0, plug_in_minutes: float = 5.0) -> str:
    """The scenario; with ``plug_ins`` > 0 that share of the cars plugs in from 15 s after the
    emulator's clock starts, spread over ``plug_in_minutes`` (so that webhooks, plans and
    commands happen during registration and the load), and leaves 3-6 h later."""
    accounts = max(1, vehicles // CARS_PER_ACCOUNT)
    behaviour = ""
    if plug_ins > 0:
        first = start + timedelta(seconds=15)  # start is on the slot grid: the emulator's clock starts there
        last = first + timedelta(minutes=plug_in_minutes)
        leave = last + timedelta(hours=3)
        if leave.date() != first.date() or (leave + timedelta(hours=3)).date() != first.date():
            raise SystemExit("--plug-ins needs the run to start before 17:30 UTC (the sessions must not cross midnight)")
        hm = lambda t: t.strftime("%H:%M:%S")
        mid = first + (last - first) / 2
        behaviour = f"""    behaviour:
      plug_in_probability: {min(1.0, plug_ins):g}
      plug_in: {{earliest: "{hm(first)}", latest: "{hm(last)}", mean: "{hm(mid)}", sd_minutes: {max(0.5, plug_in_minutes / 3):g}}}
      departure_day_offset: 0
      departure: {{earliest: "{hm(leave)}", latest: "{hm(leave + timedelta(hours=3))}", mean: "{hm(leave + timedelta(hours=1.5))}", sd_minutes: 60}}
"""
    return f"""\
# written by bench/server_load.py: {vehicles} Smartcar cars on {accounts} accounts, starting "now"
name: server-load-{vehicles}
description: {vehicles} Smartcar cars for the server load benchmark
start: {start.strftime('%Y-%m-%dT%H:%M:%SZ')}
days: 2
seed: 7
oem_profiles:
  smartcar:
    api: smartcar
    push: true
    push_delay_s: 5
    charge_on_plug_in: true
    charge_limit_control: true
    read_latency: {{median_s: 0.3, p95_s: 1.0}}
    command_latency: {{median_s: 1.0, p95_s: 3.0}}
    token_lifetime_s: 7200
fleet:
  - name: cars
    count: {vehicles}
    accounts: {accounts}
    oem: smartcar
    vehicle: {{model: family-64kWh, battery_kwh: 64, max_ac_kw: 7.4, taper_knee_soc: 0.8, taper_floor_kw: 2.0}}
    charger: {{max_kw: 7.0}}
    preferences: {{target_soc: 0.8, min_soc: 0.2}}
{behaviour}signals:
  slot_minutes: 15
"""


# -- registration ------------------------------------------------------------------------------


async def register(base: str, accounts: list[str], concurrency: int) -> dict:
    """Sign up one user per account and link it; returns per user its token and vehicle ids."""
    # idle connections expire before uvicorn's 5 s keep-alive timeout, which would close one
    # under a request just sent on it (a ReadError that is the client's, not the server's)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2,
                          keepalive_expiry=2.0)
    sem = asyncio.Semaphore(concurrency)
    users: list[dict] = []
    errors: list[str] = []
    stage_s = {"signup": 0.0, "token": 0.0, "connect": 0.0, "consent": 0.0, "callback": 0.0}

    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as c, \
            httpx.AsyncClient(timeout=600, limits=limits) as oem:
        async def one(i: int, account: str) -> None:
            async with sem:
                email = f"driver{i}@bench.example.org"
                try:
                    t = time.perf_counter()
                    r = await c.post("/auth/signup", json={"email": email, "password": PASSWORD})
                    assert r.status_code == 201, f"signup {r.status_code} {r.text[:200]}"
                    t, stage_s["signup"] = time.perf_counter(), stage_s["signup"] + time.perf_counter() - t
                    r = await c.post("/auth/token", data={"username": email, "password": PASSWORD})
                    assert r.status_code == 200, f"token {r.status_code} {r.text[:200]}"
                    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
                    t, stage_s["token"] = time.perf_counter(), stage_s["token"] + time.perf_counter() - t
                    r = await c.get("/oem/smartcar/connect", params={"redirect": "false"}, headers=auth)
                    assert r.status_code == 200, f"connect {r.status_code} {r.text[:200]}"
                    url = r.json()["authorize_url"]
                    t, stage_s["connect"] = time.perf_counter(), stage_s["connect"] + time.perf_counter() - t
                    sep = "&" if "?" in url else "?"
                    consent = await oem.get(f"{url}{sep}{urlencode({'user': account})}")
                    assert consent.status_code == 302, f"consent {consent.status_code} {consent.text[:200]}"
                    back = urlsplit(consent.headers["location"])
                    t, stage_s["consent"] = time.perf_counter(), stage_s["consent"] + time.perf_counter() - t
                    r = await c.get(f"{back.path}?{back.query}")
                    assert r.status_code == 200, f"callback {r.status_code} {r.text[:200]}"
                    stage_s["callback"] += time.perf_counter() - t
                    users.append({"account": account, "auth": auth["Authorization"],
                                  "vehicles": [v["id"] for v in r.json()["vehicles"]]})
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{account}: {type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, a) for i, a in enumerate(accounts)))
        elapsed = time.perf_counter() - t0
    return {"users": users, "errors": errors, "elapsed_s": elapsed, "stage_s": stage_s}


# -- the load (its own process) ----------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class RawPool:
    """HTTP/1.1 keep-alive GETs over plain asyncio streams: an idle connection is reused, a new
    one opened when none is idle (up to ``max_connections``, then requests wait their turn).

    The load generator's own client: httpx/httpcore look for a connection by scanning every
    waiting request against every connection, so once a backlog forms the generator itself
    burns the CPU and its latencies are its own (measured: 40 % of a core, seconds of lag)."""

    def __init__(self, base: str, max_connections: int = 256) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.opened = 0
        #: kept-alive connections found closed by the server (retried, not errors)
        self.stale = 0

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}\r\n".encode()
        async with self.slots:
            while True:
                fresh = not self.idle
                if fresh:
                    conn = await asyncio.open_connection(self.host, self.port)
                    self.opened += 1
                else:
                    conn = self.idle.pop()
                reader, writer = conn
                try:
                    writer.write(request)
                    await writer.drain()
                    status_line = await reader.readline()
                    if not status_line:
                        raise ConnectionResetError("closed by the server")
                    status = int(status_line.split()[1])
                    length, close = 0, False
                    while True:
                        line = await reader.readline()
                        if line in (b"\r\n", b"\n", b""):
                            break
                        name, _, value = line.decode("latin-1").partition(":")
                        name = name.strip().lower()
                        if name == "content-length":
                            length = int(value)
                        elif name == "connection" and value.strip().lower() == "close":
                            close = True
                    body = await reader.readexactly(length) if length else b""
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    if fresh:
                        raise
                    self.stale += 1
                    continue  # a kept-alive connection the server had closed (idle timeout): try the next
                if close:
                    writer.close()
                else:
                    self.idle.append(conn)
                return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def load(base: str, targets: list[tuple[str, str]], rate: float, seconds: float, seed: int) -> dict:
    """Open loop: request i is due at t0 + i / rate, whatever the answers before it."""
    rng = random.Random(seed)
    count = int(rate * seconds)
    from_due: list[float] = []
    from_send: list[float] = []
    statuses: dict[str, int] = {}
    lag: list[float] = []
    pool = RawPool(base)
    # warm the connection pool a little (not measured)
    vid, auth = targets[0]
    await asyncio.gather(*(pool.get(f"/vehicles/{vid}/status", {"Authorization": auth}) for _ in range(20)))

    async def one(due: float, vid: str, auth: str) -> None:
        sent = time.perf_counter()
        lag.append(sent - due)
        try:
            code, body = await pool.get(f"/vehicles/{vid}/status", {"Authorization": auth})
            key = str(code)
            if code == 200 and not json.loads(body).get("controlled"):
                key = "200-uncontrolled"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            key = type(exc).__name__
        done = time.perf_counter()
        statuses[key] = statuses.get(key, 0) + 1
        from_due.append(done - due)
        from_send.append(done - sent)

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        vid, auth = targets[rng.randrange(len(targets))]
        tasks.append(asyncio.create_task(one(due, vid, auth)))
    issued_s = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    total_s = time.perf_counter() - t0
    pool.close()
    from_due.sort()
    from_send.sort()
    lag.sort()
    ok = statuses.get("200", 0)
    return {
        "requests": count, "ok": ok, "errors": count - ok, "statuses": statuses, "connections": pool.opened,
        "stale_connections": pool.stale,
        "issued_s": issued_s, "total_s": total_s, "offered_rate": count / issued_s if issued_s else 0.0,
        "achieved_rate": count / total_s if total_s else 0.0,
        "ms": {f"p{q}": percentile(from_due, q) * 1000 for q in (50, 90, 99)} | {"max": from_due[-1] * 1000},
        "ms_from_send": {f"p{q}": percentile(from_send, q) * 1000 for q in (50, 90, 99)} | {"max": from_send[-1] * 1000},
        "send_lag_ms": {"p50": percentile(lag, 50) * 1000, "p99": percentile(lag, 99) * 1000, "max": lag[-1] * 1000},
    }


def load_worker(spec_file: str, out_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    result = asyncio.run(load(spec["base"], [tuple(t) for t in spec["targets"]], spec["rate"], spec["seconds"],
                              spec["seed"]))
    Path(out_file).write_text(json.dumps(result))


# -- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    wall0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="server-load-"))
    procs: list[Process] = []
    figures: dict = {"vehicles": args.vehicles, "rate": args.rate, "seconds": args.seconds, "tmp": str(tmp),
                     "plug_ins": args.plug_ins}
    try:
        ports = {"smartcar": free_port(), "server": free_port()}
        base = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
        # the server's clock is wall time: the scenario starts now (the emulator floors it to
        # the scenario's 15-minute slot grid, so its clock trails wall time by up to 15 minutes)
        now = datetime.now(UTC)
        start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        scenario = tmp / "server_load.yaml"
        scenario.write_text(scenario_yaml(args.vehicles, start, args.plug_ins, args.plug_in_minutes))
        env_emu = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its access log is what is counted
        t = time.perf_counter()
        emulator = Process("the emulator", [TWIN, "emulate", "smartcar", "--scenario", str(scenario), "--port",
                                            str(ports["smartcar"]), "--speed", "1", "--webhook-url",
                                            f"{base['server']}/webhooks/smartcar"], tmp / "emulator.log", env_emu)
        procs.append(emulator)
        wait_until(lambda: httpx.get(f"{base['smartcar']}/docs", timeout=2).status_code == 200, 600,
                   "the emulator", emulator)
        figures["emulator_start_s"] = time.perf_counter() - t
        text = emulator.log.read_text(errors="replace")
        accounts = re.findall(r"^account (\S+): ", text, flags=re.MULTILINE)
        clock_line = re.search(r"clock\s+starts at ([^\s,]+)", text)
        figures["emulator_clock_start"] = clock_line.group(1) if clock_line else None
        if not accounts:
            raise RuntimeError(f"no accounts in the emulator's startup text:\n{text[:3000]}")

        env = {**os.environ,
               "CHARGETWIN_TOKEN_KEY": _fernet_key(), "CHARGETWIN_JWT_SECRET": "s" * 40,
               "CHARGETWIN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/server.db",
               "CHARGETWIN_PUBLIC_URL": base["server"],
               "CHARGETWIN_SMARTCAR_CLIENT_ID": "emulator-client-id",
               "CHARGETWIN_SMARTCAR_CLIENT_SECRET": "emulator-client-secret",
               "CHARGETWIN_SMARTCAR_MANAGEMENT_TOKEN": "emulator-amt",
               "CHARGETWIN_SMARTCAR_API_URL": base["smartcar"],
               "CHARGETWIN_SMARTCAR_TOKEN_URL": f"{base['smartcar']}/oauth/token",
               "CHARGETWIN_SMARTCAR_CONNECT_URL": f"{base['smartcar']}/oauth/authorize",
               "PYTHONUNBUFFERED": "1"}
        for k in [k for k in env if k.startswith("CHARGETWIN_TESLA_")]:
            del env[k]
        t = time.perf_counter()
        server = Process("the server", [TWIN, "serve", "--port", str(ports["server"])], tmp / "server.log", env,
                         cwd=tmp)
        procs.append(server)
        wait_until(lambda: httpx.get(f"{base['server']}/health", timeout=2).json(), 120, "the server", server)
        figures["server_start_s"] = time.perf_counter() - t

        calls_before = oem_calls(emulator.log)
        reg = asyncio.run(register(base["server"], accounts, args.concurrency))
        calls_after_reg = oem_calls(emulator.log)
        reg_offset = emulator.log.stat().st_size
        t_reg_end = time.perf_counter()
        registered = sum(len(u["vehicles"]) for u in reg["users"])
        figures["registration"] = {
            "accounts": len(accounts), "linked": len(reg["users"]), "vehicles": registered,
            "errors": len(reg["errors"]), "first_errors": reg["errors"][:3], "elapsed_s": reg["elapsed_s"],
            "vehicles_per_s": registered / reg["elapsed_s"], "accounts_per_s": len(reg["users"]) / reg["elapsed_s"],
            "stage_s": reg["stage_s"], "oem_calls": calls_after_reg["all"] - calls_before["all"],
        }
        health = httpx.get(f"{base['server']}/health", timeout=30).json()
        figures["controlled_after_registration"] = health.get("vehicles_controlled")
        if not reg["users"]:
            raise RuntimeError(f"no account linked: {reg['errors'][:3]}\n{server.tail()}")

        # the load, from its own process
        targets = [(vid, u["auth"]) for u in reg["users"] for vid in u["vehicles"]]
        spec = tmp / "load.json"
        spec.write_text(json.dumps({"base": base["server"], "targets": targets, "rate": args.rate,
                                    "seconds": args.seconds, "seed": 1}))
        out = tmp / "load-result.json"
        calls_load0 = oem_calls(emulator.log)
        load_offset = emulator.log.stat().st_size
        t_load0 = time.perf_counter()
        worker = subprocess.run([sys.executable, __file__, "--load-worker", str(spec), str(out)],
                                timeout=args.seconds * 10 + 120, check=False)
        t_load1 = time.perf_counter()
        calls_load1 = oem_calls(emulator.log)
        if worker.returncode != 0:
            raise RuntimeError(f"the load worker failed ({worker.returncode})")
        figures["load"] = json.loads(out.read_text())
        figures["load"]["window_s"] = t_load1 - t_load0

        def per_car_hour(calls: int, seconds: float) -> float:
            return calls / (registered * seconds / 3600.0) if registered and seconds > 0 else float("nan")

        load_calls = calls_load1["all"] - calls_load0["all"]
        after_calls = calls_load1["all"] - calls_after_reg["all"]
        figures["oem"] = {
            "load_window_calls": load_calls, "load_window_s": t_load1 - t_load0,
            "load_window_per_car_hour": per_car_hour(load_calls, t_load1 - t_load0),
            "after_registration_calls": after_calls, "after_registration_s": t_load1 - t_reg_end,
            "after_registration_per_car_hour": per_car_hour(after_calls, t_load1 - t_reg_end),
            "during_registration_calls": calls_after_reg["all"] - calls_before["all"],
            "non_2xx_total": calls_load1["errors"], "token_calls_total": calls_load1["token"],
            "by_endpoint_total": endpoint_breakdown(emulator.log),
            "by_endpoint_load": endpoint_breakdown(emulator.log, load_offset),
            "load_window_repeat_calls": repeat_calls(emulator.log, load_offset),
            "after_registration_repeat_calls": repeat_calls(emulator.log, reg_offset),
            "plug_ins_so_far": len(re.findall(r" plugged in at SoC", emulator.log.read_text(errors="replace"))),
        }
        slog = server.log.read_text(errors="replace")
        figures["server_log"] = {"webhooks_received": len(re.findall(r'"POST /webhooks/smartcar HTTP/1\.1" 200', slog)),
                                 "webhooks_rejected": len(re.findall(r'"POST /webhooks/smartcar HTTP/1\.1" [45]', slog)),
                                 "errors": len(re.findall(r"^(ERROR|Traceback)", slog, flags=re.MULTILINE)),
                                 "warnings": len(re.findall(r"^WARNING", slog, flags=re.MULTILINE))}
        figures["server_alive"] = server.alive()
        return figures
    finally:
        for p in reversed(procs):
            p.stop()
        figures["wall_s"] = time.perf_counter() - wall0
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def report(f: dict) -> None:
    reg, ld, oem = f["registration"], f["load"], f["oem"]

    def per_car_hour(calls: int, seconds: float) -> float:
        n = reg["vehicles"]
        return calls / (n * seconds / 3600.0) if n and seconds > 0 else float("nan")

    ms, ms_send = ld["ms"], ld["ms_from_send"]
    p99_ok = ms["p99"] < TARGET_P99_MS
    oem_ok = oem["after_registration_per_car_hour"] <= TARGET_CALLS_PER_CAR_HOUR
    rows = [
        ("vehicles registered", (f"{reg['vehicles']} on {reg['linked']}/{reg['accounts']} accounts "
                                f"({reg['errors']} errors); controlled: {f['controlled_after_registration']}")),
        ("registration", (f"{reg['elapsed_s']:.1f} s: {reg['vehicles_per_s']:.0f} vehicles/s, "
                         f"{reg['accounts_per_s']:.2f} accounts/s ({reg['oem_calls']} OEM calls)")),
        ("  time per stage (sum)", ", ".join(f"{k} {v:.1f} s" for k, v in reg["stage_s"].items())),
        ("status load", (f"{ld['requests']} requests offered at {ld['offered_rate']:.0f}/s, "
                        f"achieved {ld['achieved_rate']:.0f}/s; errors {ld['errors']} {ld['statuses']}; "
                        f"{ld['connections']} connections ({ld['stale_connections']} found closed, retried)")),
        ("latency (from due)", (f"p50 {ms['p50']:.1f}  p90 {ms['p90']:.1f}  p99 {ms['p99']:.1f}  max {ms['max']:.1f} ms  "
                               f"[target p99 < {TARGET_P99_MS:.0f}: {'met' if p99_ok else 'MISSED'}]")),
        ("latency (from send)", (f"p50 {ms_send['p50']:.1f}  p90 {ms_send['p90']:.1f}  p99 {ms_send['p99']:.1f}  "
                                f"max {ms_send['max']:.1f} ms")),
        ("generator send lag", (f"p50 {ld['send_lag_ms']['p50']:.1f}  p99 {ld['send_lag_ms']['p99']:.1f}  "
                               f"max {ld['send_lag_ms']['max']:.1f} ms")),
        ("OEM calls, load window", (f"{oem['load_window_calls']} in {oem['load_window_s']:.1f} s = "
                                   f"{oem['load_window_per_car_hour']:.2f} per car-hour")),
        ("OEM calls, after reg.", (f"{oem['after_registration_calls']} in {oem['after_registration_s']:.1f} s = "
                                  f"{oem['after_registration_per_car_hour']:.2f} per car-hour "
                                  f"[target <= {TARGET_CALLS_PER_CAR_HOUR:g}: {'met' if oem_ok else 'MISSED'}]")),
        ("OEM calls by endpoint", ", ".join(f"{k}: {v}" for k, v in sorted(oem["by_endpoint_total"].items()))),
        ("OEM calls, steady state", (f"{oem['load_window_repeat_calls']} in the load window = "
                                    f"{per_car_hour(oem['load_window_repeat_calls'], oem['load_window_s']):.2f}, "
                                    f"{oem['after_registration_repeat_calls']} after registration = "
                                    f"{per_car_hour(oem['after_registration_repeat_calls'], oem['after_registration_s']):.2f} "
                                    "per car-hour (without linking: discovery, each car's first reading, tokens)")),
        ("  in the load window", ", ".join(f"{k}: {v}" for k, v in sorted(oem["by_endpoint_load"].items())) or "none"),
        ("cars plugged in so far", f"{oem['plug_ins_so_far']} (--plug-ins {f['plug_ins']:g})"),
        ("OEM non-2xx / token", f"{oem['non_2xx_total']} / {oem['token_calls_total']}"),
        ("server", (f"webhooks received {f['server_log']['webhooks_received']}, rejected "
                   f"{f['server_log']['webhooks_rejected']}; log ERROR/Traceback lines {f['server_log']['errors']}; "
                   f"alive at the end: {f['server_alive']}")),
        ("start-up", (f"emulator {f['emulator_start_s']:.1f} s (clock starts {f['emulator_clock_start']}), "
                     f"server {f['server_start_s']:.1f} s")),
        ("wall time", f"{f['wall_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print(f"server load: {f['vehicles']} vehicles, {f['rate']:g} req/s for {f['seconds']:g} s")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--load-worker"]:
        load_worker(argv[1], argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vehicles", type=int, default=None, help="default 10,000 (500 with --quick)")
    p.add_argument("--rate", type=float, default=200.0, help="GET /vehicles/{id}/status per second (open loop)")
    p.add_argument("--seconds", type=float, default=None, help="default 30 (10 with --quick)")
    p.add_argument("--concurrency", type=int, default=8, help="accounts linked at a time")
    p.add_argument("--plug-ins", type=float, default=0.0,
                   help="share of the cars that plug in during the run, from 15 s after the emulator starts "
                        "(default 0: with the default behaviour no session starts for hours)")
    p.add_argument("--plug-in-minutes", type=float, default=None,
                   help="the plug-ins spread over this many minutes from the start (default: 0.5 quick, 6 otherwise)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 500 vehicles, 10 s (unless given)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.vehicles is None:
        args.vehicles = 500 if args.quick else 10_000
    if args.seconds is None:
        args.seconds = 10.0 if args.quick else 30.0
    if args.plug_in_minutes is None:
        args.plug_in_minutes = 0.5 if args.quick else 6.0
    figures = run(args)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
