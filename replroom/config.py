"""All of replroom's configuration, in one typed settings object.

Values come from (highest priority first) explicit arguments, ``REPLROOM_*``
environment variables, the TOML file named by ``REPLROOM_CONFIG`` and the
defaults below. Every default is the safe one; see docs/configuration.md.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_SUFFIXES = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB}


def parse_size(value: str | int) -> int:
    """Parse a byte size the way Docker does: ``100m``, ``64MiB``, ``1g`` or plain bytes."""
    if isinstance(value, int):
        return value
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    number, suffix = text, ""
    if text and text[-1] in _SIZE_SUFFIXES:
        number, suffix = text[:-1], text[-1]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a size: {value!r} (use e.g. 100m, 64MiB, 1g)") from None
    return int(amount * _SIZE_SUFFIXES[suffix])


def format_size(n: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


Size = Annotated[int, BeforeValidator(parse_size)]


class Limits(BaseModel):
    """Resource limits of one room's sandbox. Swap is always off."""

    model_config = ConfigDict(frozen=True)

    memory: Size = Field(256 * MiB, ge=16 * MiB, le=64 * GiB, description="memory, bytes")
    cpus: float = Field(0.5, ge=0.01, le=64, description="CPU time, in cores")
    pids: int = Field(128, ge=8, le=65536, description="processes and threads")
    disk: Size = Field(64 * MiB, ge=1 * MiB, le=64 * GiB, description="writable /home/room + /tmp")

    def describe(self) -> str:
        return (
            f"memory {format_size(self.memory)}, cpus {self.cpus:g}, "
            f"pids {self.pids}, disk {format_size(self.disk)}"
        )


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _state_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/replroom")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "replroom"


def _default_data_dir() -> Path:
    return _state_root()


def _default_image_dir() -> Path:
    # Not under data_dir: a server started with another --data-dir still finds
    # the image that `make run` built (it takes a minute to build).
    return _state_root() / "images"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPLROOM_", env_nested_delimiter="__")

    data_dir: Path = Field(default_factory=_default_data_dir, description="server state")
    image_dir: Path = Field(
        default_factory=_default_image_dir,
        description="room images, built once and shared by every data dir",
    )
    runtime_dir: Path = Field(Path("/run/replroom"), description="per-room mounts and sockets")

    instance: str = Field(
        "replroom",
        pattern=r"^[a-z][a-z0-9-]{0,30}$",
        description="names this server's sandboxes; servers sharing a host leave others' alone",
    )
    backend: Literal["bwrap", "docker"] = "bwrap"
    docker_runtime: Literal["runc", "runsc"] = "runc"
    docker_host: str | None = Field(
        None, description="Docker Engine address; default: DOCKER_HOST or the local socket"
    )

    limits: Limits = Field(default_factory=Limits)

    # The server.
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = Field(
        None, description="base URL of invitation links; default: the URL the request came to"
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="extra Origins allowed for WebSockets; the server's own is always allowed",
    )
    default_language: str = "python"
    idle_timeout: float = Field(600, ge=0, description="seconds an empty room keeps its sandbox")
    room_retention: float = Field(30 * 86400, ge=0, description="seconds an unused room is kept")
    memory_budget: Size = Field(
        default_factory=lambda: _physical_memory() * 3 // 4,
        description="memory for all sandboxes; max sandboxes = budget / limits.memory",
    )
    max_members: int = Field(64, ge=1, description="members per room")
    output_rate: Size = Field(
        1 * MiB,
        ge=64 * KiB,
        description="terminal output a room may send per second; a faster REPL is slowed down",
    )
    health_interval: float = Field(2.0, gt=0, description="seconds between sandbox checks")
    pool_size: int | None = Field(
        None, ge=0, le=64, description="sandboxes made ahead; default 2 for docker, 0 for bwrap"
    )

    def pool_size_for(self, backend: str) -> int:
        if self.pool_size is not None:
            return self.pool_size
        return 2 if backend == "docker" else 0

    # Each bwrap room runs as its own host uid, so that even a namespace escape
    # leaves rooms unable to touch each other's processes or files.
    uid_base: int = Field(2_000_000, ge=1000, description="first host uid for bwrap rooms")
    uid_count: int = Field(65536, ge=1, description="number of host uids for bwrap rooms")

    @field_validator("default_language")
    @classmethod
    def _known_language(cls, name: str) -> str:
        from replroom.languages import LANGUAGES  # noqa: PLC0415 - languages imports nothing of ours

        if name not in LANGUAGES:
            raise ValueError(f"unknown language {name!r} (known: {', '.join(LANGUAGES)})")
        return name

    @property
    def max_sandboxes(self) -> int:
        """How many sandboxes fit in the memory budget at once."""
        return max(1, self.memory_budget // self.limits.memory)

    @model_validator(mode="after")
    def _pool_fits(self) -> Settings:
        pool = self.pool_size_for(self.backend)
        if pool and pool >= self.max_sandboxes:
            raise ValueError(
                f"pool_size {pool} leaves no room for rooms: the memory budget "
                f"({format_size(self.memory_budget)}) holds {self.max_sandboxes} sandbox(es) of "
                f"{format_size(self.limits.memory)}; lower pool_size or raise memory_budget"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("REPLROOM_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
