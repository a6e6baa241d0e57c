"""wharf-balancer's HTTP listener against clients nobody here wrote: curl, the standard
library's http.client and urllib3. (wsproto's WebSocket client runs through the balancer in
tests/balancer/listeners/test_websocket.py.)"""

from __future__ import annotations

import http.client
import json
import shutil

import pytest
import trio
import urllib3

from balancer.config import Conditions, Redirect, Rule
from tests.support.balancer_http import balancer, config, front, group, listener
from tests.support.targets import TargetServer, running_targets

pytestmark = pytest.mark.slow

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

REDIRECT = Rule(
    priority=1,
    conditions=Conditions(path_pattern=("/old/*",)),
    action=Redirect(path="/new/#{path}", status_code="HTTP_302"),
)


async def curl(*args: str) -> tuple[int, str, str]:
    assert CURL is not None
    result = await trio.run_process(
        [CURL, "--silent", "--show-error", "--max-time", "10", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@needs_curl
async def test_curl_keep_alive_redirects_and_uploads(tmp_path):
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"x" * 3_000_000)  # big enough for curl to send Expect: 100-continue
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(rules=[REDIRECT])], [group("web", target)])) as daemon,
    ):
        host, port = front(daemon)
        base = f"http://{host}:{port}"
        # Two URLs in one invocation: curl reuses the connection.
        code, out, err = await curl("-v", f"{base}/one", f"{base}/two")
        assert code == 0, err
        assert "Re-using existing connection" in err or "Reusing existing" in err
        assert [json.loads(doc)["target"] for doc in out.replace("}{", "}\n{").splitlines()] == [
            "/one",
            "/two",
        ]
        code, out, err = await curl("-L", f"{base}/old/page?q=1")
        assert code == 0, err
        assert json.loads(out)["target"] == "/new/old/page?q=1"
        code, out, err = await curl("-v", "--data-binary", f"@{upload}", f"{base}/up")
        assert code == 0, err
        assert json.loads(out)["body_length"] == 3_000_000
        assert "Expect: 100-continue" in err
        code, out, err = await curl(
            "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", f"{base}/chunked"
        )
        assert code == 0, err
        assert json.loads(out)["body_length"] == 3_000_000
        code, out, err = await curl("--http1.0", f"{base}/ten")
        assert code == 0, err
        assert json.loads(out)["target"] == "/ten"
        code, out, _ = await curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Length: 1",
            "-H",
            "Content-Length: 2",
            "-d",
            "ab",
            f"{base}/smuggle",
        )
        assert out == "400"


async def test_standard_library_and_urllib3_clients():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        host, port = front(daemon)

        def with_http_client() -> list[int]:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            statuses = []
            for path in ("/a", "/b", "/c"):
                conn.request("POST", path, body=b"payload", headers={"X-Test": "1"})
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            conn.close()
            return statuses

        assert await trio.to_thread.run_sync(with_http_client) == [200, 200, 200]

        def with_urllib3() -> tuple[int, dict[str, object]]:
            pool = urllib3.HTTPConnectionPool(host, port, maxsize=1, timeout=10)
            try:
                response = pool.request("GET", "/u?x=1", headers={"Accept": "*/*"})
                return response.status, json.loads(response.data)
            finally:
                pool.close()

        status, doc = await trio.to_thread.run_sync(with_urllib3)
        assert status == 200
        assert doc["target"] == "/u?x=1"
        assert [s.body for s in target.seen[:3]] == [b"payload"] * 3
