"""The `replroom` command line, run as operators and scripts run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from replroom.config import Settings
from tests.sandboxes import design_note_cpus

REPLROOM = [sys.executable, "-m", "replroom.cli"]


def replroom(
    *args: str, settings: Settings, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "REPLROOM_RUNTIME_DIR": str(settings.runtime_dir),
        "REPLROOM_INSTANCE": settings.instance,
        **(env or {}),
    }
    return subprocess.run(
        [*REPLROOM, *args], check=False, capture_output=True, text=True, env=full_env, input=stdin,
        timeout=180,
    )  # fmt: skip


BACKEND_ARGS = {
    "bwrap": ["--backend", "bwrap"],
    "docker-runc": ["--backend", "docker", "--runtime", "runc"],
    "docker-runsc": ["--backend", "docker", "--runtime", "runsc"],
}


@pytest.fixture(params=list(BACKEND_ARGS))
def backend_args(request: pytest.FixtureRequest, room_image: object) -> list[str]:
    if request.param != "bwrap" and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    return BACKEND_ARGS[request.param]


def test_run_streams_output_and_exits_with_the_status(
    settings: Settings, backend_args: list[str]
) -> None:
    result = replroom(
        "sandbox", "run", *backend_args, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
        settings=settings,
    )  # fmt: skip
    assert result.returncode == 7, result.stderr
    assert "out" in result.stdout and "err" in result.stdout


def test_run_passes_stdin(settings: Settings, backend_args: list[str]) -> None:
    result = replroom(
        "sandbox", "run", *backend_args, "--", "wc", "-l", settings=settings, stdin="a\nb\nc\n"
    )
    assert result.stdout.strip() == "3", result.stderr


def test_out_of_memory_exits_137_with_a_message(
    settings: Settings, backend_args: list[str]
) -> None:
    result = replroom(
        "sandbox", "run", *backend_args, "--memory", "100m", "--cpus", "0.5", "--",
        "python3", "-c", "x = []\nwhile True: x.append(bytearray(1 << 20))",
        settings=settings,
    )  # fmt: skip
    assert result.returncode == 137
    assert "out of memory" in result.stderr
    assert "100 MiB" in result.stderr


def test_design_note_profile_runs_every_repl_language(
    settings: Settings, backend_args: list[str], request: pytest.FixtureRequest
) -> None:
    cpus = design_note_cpus(request.node.callspec.params["backend_args"])
    result = replroom(
        "sandbox", "run", *backend_args, "--memory", "100m", "--cpus", str(cpus), "--",
        "sh", "-c", "python3 -c 'print(1)' && node -e 'console.log(2)' && ruby -e 'p 3'",
        settings=settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "3"]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "-5m"], "memory"),
        (["--memory", "1t"], "size"),
        (["--memory", "900g"], "memory"),
        (["--cpus", "0"], "cpus"),
        (["--cpus", "lots"], "cpus"),
        (["--pids", "2"], "pids"),
        (["--disk", "0"], "disk"),
        (["--backend", "vm"], "backend"),
        (["--runtime", "kata"], "runtime"),
        ([], "no command"),
    ],
)
def test_bad_options_give_one_error_line_and_exit_2(
    settings: Settings, args: list[str], message: str
) -> None:
    command = [] if message == "no command" else ["--", "true"]
    result = replroom("sandbox", "run", *args, *command, settings=settings)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replroom: error:") and message in lines[0], lines[0]


def test_missing_image_is_one_clear_error(settings: Settings, tmp_path: Path) -> None:
    result = replroom(
        "sandbox", "run", "--", "true",
        settings=settings, env={"REPLROOM_IMAGE_DIR": str(tmp_path / "none")},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "replroom: error: room image not built: run `replroom image build`"
    ]


def test_doctor_reports_every_backend(settings: Settings, room_image: object) -> None:
    result = replroom("doctor", settings=settings)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("bwrap", "docker (runc)", "docker (runsc)"):
        assert name in result.stdout
    assert "configured backend: bwrap: ready" in result.stdout


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP", "stdout closed"])
def test_run_removes_its_sandbox_however_it_is_stopped(
    settings: Settings, backend_args: list[str], how: str
) -> None:
    """Nothing is left running when an operator or a pipeline stops `sandbox run`."""
    env = {
        **os.environ,
        "REPLROOM_RUNTIME_DIR": str(settings.runtime_dir),
        "REPLROOM_INSTANCE": f"sig-{uuid.uuid4().hex[:12]}",
    }
    run = subprocess.Popen(
        [*REPLROOM, "sandbox", "run", *backend_args, "--", "sh", "-c", "echo started; sleep 300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert run.stdout is not None
    try:
        assert run.stdout.readline() == b"started\n"
        if how == "stdout closed":
            run.stdout.close()
            expected = 128 + signal.SIGPIPE
        else:
            run.send_signal(signal.Signals[how])
            expected = 128 + signal.Signals[how]
        assert run.wait(timeout=120) == expected
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    cleanup = subprocess.run(
        [*REPLROOM, "sandbox", "cleanup", *backend_args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert cleanup.returncode == 0, cleanup.stderr
    assert cleanup.stdout.strip() == "removed 0 leftover sandbox(es)"
