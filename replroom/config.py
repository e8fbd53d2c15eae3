"""All of replroom's configuration, in one typed settings object.

Values come from (highest priority first) explicit arguments, ``REPLROOM_*``
environment variables, the TOML file named by ``REPLROOM_CONFIG`` and the
defaults below. Every default is the safe one. Each field's description is its
documentation: docs/configuration.md's table (scripts/generate.py) and the
CLI's help (``settings_help``) are made from the fields.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
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

    memory: Size = Field(256 * MiB, ge=16 * MiB, le=64 * GiB, description="memory per room")
    cpus: float = Field(0.5, ge=0.01, le=64, description="CPU time per room, in cores")
    pids: int = Field(128, ge=8, le=65536, description="processes and threads per room")
    disk: Size = Field(
        64 * MiB,
        ge=1 * MiB,
        le=64 * GiB,
        description="writable `/home/room` + `/tmp` (+ `/dev/shm` with bwrap) per room",
    )

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


_BUDGET_PERCENT = 75
# Spares per kind of sandbox: gVisor's cost ~20 MiB more each (docs/performance.md).
_POOL_SIZES = {"bwrap": 2, "docker with runc": 2, "docker with runsc": 1, "kubernetes": 2}


def _all_languages() -> tuple[str, ...]:
    from replroom.languages import LANGUAGES  # noqa: PLC0415 - languages imports nothing of ours

    return tuple(LANGUAGES)


def _default_budget() -> int:
    return _physical_memory() * _BUDGET_PERCENT // 100


_DEFAULT_TEXT = "x-default-text"


def _shown_default(text: str) -> dict[str, JsonValue]:
    """How docs and help describe a default that is computed, or means "not set"."""
    return {_DEFAULT_TEXT: text}


class Settings(BaseSettings):
    """The server's settings; their descriptions are the docs (docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix="REPLROOM_", env_nested_delimiter="__")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="the SQLite databases (rooms, editor documents)",
        json_schema_extra=_shown_default("`/var/lib/replroom` (root) or `~/.local/share/replroom`"),
    )
    image_dir: Path = Field(
        default_factory=_default_image_dir,
        description="room images, built once and shared by every `data_dir` (docs/image.md)",
        json_schema_extra=_shown_default(
            "`/var/lib/replroom/images` (root) or `~/.local/share/replroom/images`"
        ),
    )
    runtime_dir: Path = Field(
        Path("/run/replroom"),
        description="per-room mounts (bwrap); made at start-up with its parents, "
        "as `/run` is empty after a reboot",
    )

    instance: str = Field(
        "replroom",
        pattern=r"^[a-z][a-z0-9-]{0,30}$",
        description="names this server's sandboxes (cgroups, container labels); "
        "servers sharing a host need different instances and leave each other's alone",
    )
    backend: Literal["bwrap", "docker", "kubernetes"] = Field(
        "bwrap", description="the sandbox backend"
    )
    docker_runtime: Literal["runc", "runsc"] = Field(
        "runc", description="the docker backend's runtime; `runsc` is gVisor"
    )
    docker_host: str | None = Field(
        None,
        description="the Docker Engine's address",
        json_schema_extra=_shown_default("`DOCKER_HOST`, else the local socket"),
    )
    kubernetes_namespace: str = Field(
        "replroom-rooms",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="the kubernetes backend's namespace, where room pods live",
    )
    kubernetes_image: str | None = Field(
        None,
        description="the room image's registry reference for the kubernetes backend "
        "(e.g. `registry.example/replroom-room:<hash>`, docs/kubernetes.md)",
        json_schema_extra=_shown_default(
            "the local tag `replroom-room:<hash>`, pulled only if not on the node"
        ),
    )
    kubernetes_runtime_class: str | None = Field(
        None,
        description="the RuntimeClass of room pods (e.g. `gvisor`)",
        json_schema_extra=_shown_default("the cluster's default runtime"),
    )
    kubernetes_seccomp_profile: str = Field(
        "RuntimeDefault",
        pattern=r"^(RuntimeDefault|Localhost:\S+)$",
        description="room pods' seccomp profile: `RuntimeDefault`, or `Localhost:<path>` "
        "for the rooms' own policy installed on the nodes (docs/security.md)",
    )
    kubernetes_config: Path | None = Field(
        None,
        description="a kubeconfig file for the kubernetes backend",
        json_schema_extra=_shown_default(
            "the pod's service account in a cluster, else `KUBECONFIG` or `~/.kube/config`"
        ),
    )

    limits: Limits = Field(
        default_factory=Limits, description="resource limits of each room's sandbox"
    )

    # The server.
    host: str = Field("127.0.0.1", description="address the server listens on")
    port: int = Field(8000, ge=1, le=65535, description="port the server listens on")
    public_url: str | None = Field(
        None,
        description="base URL of invitation links, and an allowed Origin",
        json_schema_extra=_shown_default("the URL the request came to"),
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="more Origins allowed to open room WebSockets; "
        "the server's own is always allowed",
        json_schema_extra=_shown_default("none"),
    )
    default_language: str = Field(
        "python", description="language of a new room; one of `languages`"
    )
    # NoDecode: the environment gives "python,lua", not JSON.
    languages: Annotated[tuple[str, ...], NoDecode] = Field(
        default_factory=_all_languages,
        description="the languages rooms offer, in the picker's order (comma-separated in the "
        "environment); each one beyond the base image's is a language pack (docs/image.md)",
        json_schema_extra=_shown_default("all twelve of `replroom/languages.py`"),
    )
    libraries: bool = Field(
        True,
        description="preinstall each enabled language's usual libraries in its pack "
        "(Python: numpy, pandas, matplotlib, requests, sympy; docs/image.md)",
    )
    idle_timeout: float = Field(600, ge=0, description="seconds an empty room keeps its sandbox")
    room_retention: float = Field(30 * 86400, ge=0, description="seconds an unused room is kept")
    memory_budget: Size = Field(
        default_factory=_default_budget,
        description="memory for all sandboxes: at most `memory_budget / limits.memory` run at once",
        json_schema_extra=_shown_default(f"{_BUDGET_PERCENT} % of physical memory"),
    )
    max_members: int = Field(64, ge=1, description="members per room")
    max_files: int = Field(
        32, ge=1, le=1000, description="editor files per room and language (issue 11 §5)"
    )
    max_files_bytes: Size = Field(
        4 * MiB,
        ge=64 * KiB,
        le=256 * MiB,
        description="total size of a room's editor files of one language; a change past it "
        "(an edit, a new file, an upload, a Run) is refused",
    )
    output_rate: Size = Field(
        256 * KiB,
        ge=64 * KiB,
        description="terminal output bytes a room may send per second (bursts of a quarter "
        "second's worth at once); a faster REPL is slowed down",
    )
    plot_max_bytes: Size = Field(
        5 * MiB,
        ge=64 * KiB,
        le=64 * MiB,
        description="largest plot image (PNG or SVG) a room may show in its members' plots "
        "panel; a larger one is refused and deleted unread",
    )
    screen_scrollback: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="lines of scrollback the server keeps of each REPL's screen, which a late "
        "joiner or a reconnecting member gets above the screen",
    )
    recording: bool = Field(
        True,
        description="rooms record their sessions (terminal output, markers, editor updates; "
        "docs/operations.md) unless an owner turns it off for the room",
    )
    recording_retention: float = Field(
        7 * 86400, ge=0, description="seconds a part of a room's recording is kept"
    )
    recording_max_bytes: Size = Field(
        64 * MiB,
        ge=1 * MiB,
        description="disk one room's recording may use; past it its oldest parts are dropped",
    )
    recordings_max_bytes: Size = Field(
        4 * GiB,
        ge=1 * MiB,
        description="disk all rooms' recordings may use together; past it the oldest parts "
        "(of any room) are dropped",
    )
    health_interval: float = Field(2.0, gt=0, description="seconds between sandbox health checks")
    pool_size: int | None = Field(
        None,
        ge=0,
        le=64,
        description="spare sandboxes kept with the default language's REPL at its prompt, so "
        "that a room starts without waiting; they count toward capacity and must leave a place "
        "for a room (below `memory_budget / limits.memory`). 0 turns the pool off",
        json_schema_extra=_shown_default(
            ", ".join(f"{size} for {kind}" for kind, size in _POOL_SIZES.items())
            + "; fewer if the memory budget holds fewer sandboxes"
        ),
    )
    pool_refill: int = Field(
        1,
        ge=1,
        le=16,
        description="spare sandboxes made at once when the pool refills; each is made at "
        "the least CPU weight, so refilling does not slow live rooms",
    )
    # Each bwrap room runs as its own host uid, so that even a namespace escape
    # leaves rooms unable to touch each other's processes or files.
    uid_base: int = Field(
        2_000_000,
        ge=1000,
        description="first host uid of bwrap rooms (leased in `/run/replroom-uids`)",
    )
    uid_count: int = Field(65536, ge=1, description="number of host uids for bwrap rooms")

    @property
    def effective_pool_size(self) -> int:
        """The pool's size: ``pool_size``, or the default for the backend that fits the budget."""
        if self.pool_size is not None:
            return self.pool_size
        kind = self.backend if self.backend != "docker" else f"docker with {self.docker_runtime}"
        return min(_POOL_SIZES[kind], self.max_sandboxes - 1)

    @field_validator("default_language")
    @classmethod
    def _known_language(cls, name: str) -> str:
        from replroom.languages import LANGUAGES  # noqa: PLC0415 - languages imports nothing of ours

        if name not in LANGUAGES:
            raise ValueError(f"unknown language {name!r} (known: {', '.join(LANGUAGES)})")
        return name

    @field_validator("languages", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from replroom.languages import LANGUAGES  # noqa: PLC0415 - languages imports nothing of ours

        if not names:
            raise ValueError("at least one language must be enabled")
        for name in names:
            if name not in LANGUAGES:
                raise ValueError(f"unknown language {name!r} (known: {', '.join(LANGUAGES)})")
        if len(set(names)) != len(names):
            raise ValueError("a language is listed twice")
        return names

    @model_validator(mode="after")
    def _default_language_enabled(self) -> Settings:
        if self.default_language not in self.languages:
            raise ValueError(
                f"default_language {self.default_language!r} is not one of the enabled "
                f"languages ({', '.join(self.languages)})"
            )
        return self

    @property
    def max_sandboxes(self) -> int:
        """How many sandboxes fit in the memory budget at once."""
        return max(1, self.memory_budget // self.limits.memory)

    @model_validator(mode="after")
    def _pool_fits(self) -> Settings:
        pool = self.effective_pool_size
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


# -- the settings described, for docs/configuration.md and the CLI's help ------------


@dataclass(frozen=True)
class SettingHelp:
    name: str  # as in TOML, nested ones dotted: limits.memory
    env: str
    default: str  # Markdown
    allowed: str  # Markdown; "" when any value of the type is
    meaning: str  # Markdown


def settings_help(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[SettingHelp]:
    """Every setting, described from its field (nested models flattened)."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from settings_help(field.annotation, f"{prefix}{name}.")
            continue
        dotted = prefix + name
        yield SettingHelp(
            name=dotted,
            env="REPLROOM_" + dotted.upper().replace(".", "__"),
            default=_default_text(field),
            allowed=_allowed_text(field),
            meaning=field.description or "",
        )


def setting_help(name: str) -> SettingHelp:
    """One setting's description, by its dotted name."""
    for described in settings_help():
        if described.name == name:
            return described
    raise KeyError(name)


def setting_choices(name: str) -> list[str]:
    """The values a ``Literal`` setting takes."""
    return [str(choice) for choice in get_args(Settings.model_fields[name].annotation)]


def _is_size(field: FieldInfo) -> bool:
    return any(
        isinstance(item, BeforeValidator) and item.func is parse_size for item in field.metadata
    )


def _value_text(field: FieldInfo, value: Any) -> str:
    if _is_size(field):
        return format_size(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default_text(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and _DEFAULT_TEXT in extra:
        return str(extra[_DEFAULT_TEXT])
    return f"`{_value_text(field, field.get_default(call_default_factory=True))}`"


def _allowed_text(field: FieldInfo) -> str:
    if get_origin(field.annotation) is Literal:
        return " or ".join(f"`{choice}`" for choice in get_args(field.annotation))
    bounds: dict[str, str] = {}
    for item in field.metadata:
        if pattern := getattr(item, "pattern", None):
            return f"`{pattern}`"
        for kind in ("ge", "gt", "le"):
            if (value := getattr(item, kind, None)) is not None:
                bounds[kind] = _value_text(field, value)
    if "ge" in bounds and "le" in bounds:
        return f"{bounds['ge']} to {bounds['le']}"
    signs = {"ge": "≥", "gt": ">", "le": "≤"}
    return ", ".join(f"{signs[kind]} {value}" for kind, value in bounds.items())
