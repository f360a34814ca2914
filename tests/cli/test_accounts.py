"""`macp tenant|user|client|login` against a real `macp up`, and the local admin it seeds.

One `macp up` (real services, free ports) serves the whole module; every command runs as a
subprocess, as a user would type it. The last test restarts the stack on the same data dir to
check that seeding again creates nothing new.
"""

from __future__ import annotations

import base64
import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.stack import seed, stackfile
from services.stack.infra import scratch_data_dir
from tests.stack.test_up import REPO, stack_environ

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    data_dir: Path
    environ: dict[str, str]
    log: Path
    process: subprocess.Popen[str]

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.environ['MACP_ENVOY_FRONT_PORT']}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_stack(data_dir: Path, environ: dict[str, str], log: Path, timeout: float = 90) -> Stack:
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir)],
            env=environ,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    stack = Stack(data_dir, environ, log, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = stackfile.read(data_dir)
        if document and document.get("state") == "ready":
            return stack
        if process.poll() is not None:
            pytest.fail(f"macp up exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    stack.stop()
    pytest.fail(f"macp up was not ready within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with scratch_data_dir() as base:
        data_dir = base / "data"
        running = start_stack(data_dir, stack_environ(data_dir), base / "up.out")
        try:
            yield running
        finally:
            running.stop()


def macp(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args, "--data-dir", str(stack.data_dir)],
        env=stack.environ,
        cwd=REPO,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def jwt_payload(token: str) -> dict[str, Any]:
    header, payload, signature = token.split(".")
    assert header
    assert signature
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def test_up_seeds_the_local_admin_and_says_how_to_log_in(stack: Stack) -> None:
    out = stack.log.read_text()
    assert "log in: macp login --username admin" in out
    assert "local tenant: local" in out
    assert str(seed.admin_file(stack.data_dir)) in out
    assert stat.S_IMODE(seed.admin_file(stack.data_dir).stat().st_mode) == 0o600
    admin = seed.load(stack.data_dir)
    assert admin is not None
    assert (admin.tenant_id, admin.username) == ("local", "admin")


def test_the_seeded_admin_logs_in_without_typing_a_password(stack: Stack) -> None:
    token = ok(macp(stack, "login", "--username", "admin")).strip()
    claims = jwt_payload(token)
    assert claims["tenant_id"] == "local"
    # The token is good for the API at once: a user who just logged in can create an agent.
    bearer = {"authorization": f"Bearer {token}"}
    agent = {"name": "Ada", "provider": "local", "model": "echo-1"}
    created = httpx.post(f"{stack.front_url}/v1/agents", json=agent, headers=bearer, timeout=10)
    assert created.status_code == 201, created.text
    response = json.loads(ok(macp(stack, "login", "--username", "admin", "--json")))
    assert response["token_type"] == "Bearer"
    assert response["access_token"].count(".") == 2
    assert response["refresh_token"]


def test_tenant_user_client_and_login(stack: Stack) -> None:
    assert ok(macp(stack, "tenant", "create", "acme", "--tier", "pro")).strip() == "acme"
    created = ok(
        macp(
            stack,
            "user",
            "create",
            "--tenant",
            "acme",
            "--username",
            "ada",
            "--password-stdin",
            stdin="s3cret-pass\n",
        )
    )
    fields = dict(line.split(": ", 1) for line in created.splitlines())
    assert fields["tenant_id"] == "acme"
    assert fields["username"] == "ada"

    registered = macp(
        stack,
        "client",
        "register",
        "--name",
        "acme backend",
        "--class",
        "partner",
        "--tenant",
        "acme",
        "--grant",
        "client_credentials",
    )
    lines = dict(line.split(": ", 1) for line in ok(registered).splitlines())
    assert lines["client_id"]
    assert len(lines["client_secret"]) >= 20
    assert "not shown again" in registered.stderr

    token = ok(macp(stack, "login", "--username", "ada", "--password-stdin", stdin="s3cret-pass\n")).strip()
    claims = jwt_payload(token)
    assert claims["tenant_id"] == "acme"
    assert claims["user_id"] == fields["user_id"]
    assert claims["sub"] == fields["user_id"]


def test_refusals_are_one_line_with_a_non_zero_exit(stack: Stack) -> None:
    wrong = macp(stack, "login", "--username", "admin", "--password-stdin", stdin="not-the-password\n")
    assert wrong.returncode == 1
    assert wrong.stdout == ""
    assert len(wrong.stderr.splitlines()) == 1
    assert "invalid_grant" in wrong.stderr

    again = macp(stack, "tenant", "create", "local")
    assert again.returncode == 1
    assert len(again.stderr.splitlines()) == 1
    assert "already exists" in again.stderr

    no_tenant = macp(
        stack,
        "user",
        "create",
        "--tenant",
        "nowhere",
        "--username",
        "bob",
        "--password-stdin",
        stdin="long-enough\n",
    )
    assert no_tenant.returncode == 1
    assert len(no_tenant.stderr.splitlines()) == 1

    with scratch_data_dir() as elsewhere:
        idle = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "login",
                "--username",
                "admin",
                "--data-dir",
                str(elsewhere),
            ],
            env=stack.environ,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert idle.returncode == 3
    assert idle.stderr.count("\n") == 1
    assert "no MACP stack is running" in idle.stderr
    assert "Traceback" not in idle.stderr


def test_a_second_up_reseeds_without_duplicating(stack: Stack) -> None:
    before = seed.load(stack.data_dir)
    stack.stop()
    again = start_stack(stack.data_dir, stack.environ, stack.log.with_name("up-again.out"))
    try:
        out = again.log.read_text()
        assert "local tenant: local; local admin user: admin\n" in out, out
        assert "created:" not in out
        assert seed.load(stack.data_dir) == before
        token = ok(
            macp(again, "login", "--username", "ada", "--password-stdin", stdin="s3cret-pass\n")
        ).strip()
        assert jwt_payload(token)["tenant_id"] == "acme"
    finally:
        again.stop()
