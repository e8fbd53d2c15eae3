"""The settings object: defaults and the checks made when settings are loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from replroom.config import Settings

pytestmark = pytest.mark.fast


def test_the_image_dir_does_not_follow_the_data_dir() -> None:
    assert Settings(data_dir=Path("/elsewhere")).image_dir == Settings().image_dir


def test_an_unknown_default_language_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown language 'cobol' \\(known: python, node"):
        Settings(default_language="cobol")


def test_languages_come_comma_separated_and_must_be_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLROOM_LANGUAGES", "python, lua,sqlite")
    assert Settings().languages == ("python", "lua", "sqlite")
    with pytest.raises(ValidationError, match="unknown language 'cobol'"):
        Settings(languages=("python", "cobol"))
    with pytest.raises(ValidationError, match="default_language 'python' is not one of"):
        Settings(languages=("lua",))
    assert Settings(languages=("lua",), default_language="lua").languages == ("lua",)


@pytest.mark.parametrize(("budget", "pool", "accepted"), [("512m", 2, False), ("1g", 2, True)])
def test_a_pool_the_memory_budget_cannot_hold_is_refused(
    budget: str, pool: int, accepted: bool
) -> None:
    def load() -> Settings:
        return Settings(memory_budget=budget, pool_size=pool)  # type: ignore[arg-type]

    if accepted:
        assert load().max_sandboxes == 4
    else:
        with pytest.raises(ValidationError, match="pool_size 2 leaves no room for rooms"):
            load()


def test_every_backend_pools_spares_by_default_within_the_budget() -> None:
    assert Settings(memory_budget="4g").effective_pool_size == 2  # type: ignore[arg-type]
    assert Settings(backend="docker", memory_budget="4g").effective_pool_size == 2  # type: ignore[arg-type]
    gvisor = Settings(backend="docker", docker_runtime="runsc", memory_budget="4g")  # type: ignore[arg-type]
    assert gvisor.effective_pool_size == 1
    # The default shrinks to leave a place for a room; an explicit size is refused instead.
    assert Settings(memory_budget="512m").effective_pool_size == 1  # type: ignore[arg-type]
    assert Settings(memory_budget="256m").effective_pool_size == 0  # type: ignore[arg-type]
    assert Settings(pool_size=0).effective_pool_size == 0


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLROOM_LIMITS__MEMORY", "100m")
    monkeypatch.setenv("REPLROOM_DEFAULT_LANGUAGE", "ruby")
    settings = Settings()
    assert settings.limits.memory == 100 * 1024 * 1024
    assert settings.default_language == "ruby"
