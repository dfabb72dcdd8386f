"""The server's settings, from environment variables (prefix ``CHARGETWIN_``) or a ``.env``
file in the working directory (pydantic-settings).

The defaults are the embedded ones: a SQLite file and the in-process event bus, so ``twin
serve`` needs no other service. Production points ``database_url`` at PostgreSQL and
``bus_url`` at NATS with JetStream, and must give ``token_key`` (the Fernet key OEM tokens are
encrypted with at rest) and ``jwt_secret``; outside demo mode the server refuses to start
without them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError"]


class SettingsError(ValueError):
    """The settings do not allow the server to start (the message says what to set)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARGETWIN_", env_file=".env", extra="ignore")

    database_url: str = Field("sqlite+aiosqlite:///chargetwin.db",
                              description="SQLAlchemy async URL: sqlite+aiosqlite:///FILE or "
                                          "postgresql+asyncpg://USER@HOST:PORT/DB")
    bus_url: str = Field("memory://", description="memory:// (in-process) or nats://HOST:PORT (JetStream)")
    bus_stream: str = Field("CHARGETWIN", description="NATS: the JetStream stream the server's events are kept in")
    bus_prefix: str = Field("chargetwin", description="NATS: the subject prefix of the server's topics")
    token_key: SecretStr | None = Field(None, description="Fernet key encrypting OEM tokens at rest")
    jwt_secret: SecretStr | None = Field(None, description="HMAC secret signing the API's access tokens")
    access_token_ttl_s: int = Field(3600, gt=0, le=7 * 86400)
    public_url: str = Field("http://127.0.0.1:8000", description="where the server is reached (OAuth redirects)")
    demo: bool = Field(False, description="start both OEM emulators in-process with a small fleet")
    demo_speed: float = Field(60.0, gt=0, description="demo: emulated seconds per wall second")
    policy: str = Field("smart", description="the control policy (smart, smart_onoff, edf, uncontrolled)")
    slot_minutes: int = Field(30, description="price and planning slot length")
    forecast_csv: str | None = Field(None, description="CSV of slot_start, price_gbp_per_kwh, carbon_g_per_kwh; "
                                                       "default: the built-in Agile-like and GB-carbon-like shapes")
    # OEM applications (live); in demo mode they point at the in-process emulators
    smartcar_client_id: str | None = None
    smartcar_client_secret: SecretStr | None = None
    smartcar_management_token: SecretStr | None = None
    smartcar_api_url: str = "https://api.smartcar.com"
    smartcar_token_url: str = "https://auth.smartcar.com/oauth/token"
    smartcar_connect_url: str = "https://connect.smartcar.com/oauth/authorize"
    tesla_client_id: str | None = None
    tesla_client_secret: SecretStr | None = None
    tesla_api_url: str = "https://fleet-api.prd.eu.vn.cloud.tesla.com"
    tesla_token_url: str = "https://fleet-auth.prd.vn.cloud.tesla.com/oauth2/v3/token"
    tesla_authorize_url: str = "https://auth.tesla.com/oauth2/v3/authorize"
    snapshot_interval_s: float = Field(5.0, gt=0, description="how often the controller's state is saved (wall s)")
    webhook_max_attempts: int = Field(6, gt=0, le=50, description="outbound webhook tries before dead-lettering")

    def check(self) -> None:
        """Raise :class:`SettingsError` when the server may not start with these settings."""
        missing = []
        if not self.demo:
            if self.token_key is None:
                missing.append("CHARGETWIN_TOKEN_KEY (a Fernet key: python -c \"from cryptography.fernet import "
                               "Fernet; print(Fernet.generate_key().decode())\")")
            if self.jwt_secret is None or len(self.jwt_secret.get_secret_value()) < 32:
                missing.append("CHARGETWIN_JWT_SECRET (a random string of at least 32 characters)")
        if missing:
            raise SettingsError("the server does not start without " + " and ".join(missing)
                                + "; or run the demo: twin serve --demo")
