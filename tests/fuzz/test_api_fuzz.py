"""API fuzzing: schemathesis drives a real `statehost serve` from its own ``GET /openapi.json``.

Every documented operation gets generated requests, valid and invalid ones (schemathesis's positive
and negative modes), once with the admin token and once with an end-user token signed by an API
key (``client.tokens.sign_token``). Each response must pass three checks: no 5xx
(``not_a_server_error``), the status is one the document lists (``status_code_conformance``) and the
body matches the documented schema (``response_schema_conformance``).

So that generated requests reach the core rather than a 404, a seeded world exists first (a machine
with an index and two versions, an instance, a key, a token provider, an identity provider, an
invitation) and each path parameter is drawn either from the generated value or from the seeded
resource's name. A last test asserts that most operations answered a 2xx at least once: the
document describes the API well enough to be driven by it (docs/durability.md, "API fuzzing").

Bounded for CI: FUZZ_MAX_EXAMPLES cases per operation and identity (default 25; ``make fuzz``
raises it). FUZZ_REPORT=path writes the per-operation status counts, the error codes and a sample
request of each as JSON. FUZZ_AIM=0 turns the seeded values off (the document alone drives the
requests); FUZZ_RANDOM=1 lets hypothesis draw new random cases instead of the fixed ones.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from bench.common import free_port
from client.tokens import sign_token
from server.auth import ALL_SCOPES
from server.openapi import ROUTES
from server.routes.machines import confirmation

ROOT = Path(__file__).resolve().parents[2]
TOGGLE = (ROOT / "fixtures" / "machines" / "toggle" / "v4" / "machine.ts").read_bytes()
# A machine with an HTTP API mapper (wire-api 3.16) at /http-api/{org}/machines/fuzz-hooks/hook.
HOOKS = b"""import { createMachine } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export const httpApiMapper = {
  hook: {
    handler: (req) => ({ machineInstanceName: "hooked", event: { type: "ping", method: req.method },
                         authContext: {}, initialContext: { pings: 0 } }),
    responseMapper: ({ state }) => ({ statusCode: 200, body: { state } }),
  },
};
export default createMachine({ id: "hooks", predictableActionArguments: true, initial: "idle",
  states: { idle: { on: { ping: "idle" } } } });
"""
MIGRATION = b"""export function upgradeState(path, context) { return path; }
export function upgradeContext(oldPaths, newPaths, context) { return context; }
"""
IDP_KEY = "ZnV6ei1pZGVudGl0eS1wcm92aWRlci1rZXktMzItYnl0ZXM"  # base64url of 34 bytes
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
AIM = os.environ.get("FUZZ_AIM", "1") != "0"  # 0: generated values only (to measure the document alone)
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# (identity, "METHOD /path") -> Counter of statuses; filled by the tests, read by the last one
STATUSES: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
CODES: Counter[str] = Counter()  # "METHOD /path status code" of the error answers, for the report
STATEFUL: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)  # the same, for the linked sequences
BY_MODE: dict[str, Counter[str]] = defaultdict(Counter)  # "positive, aimed" etc. -> 2xx/4xx counts
SAMPLES: dict[str, str] = {}  # the first message and request of each


class World:
    """The running server and the resources seeded into it."""

    def __init__(self, url: str, admin_token: str, org_id: str) -> None:
        self.url = url
        self.admin_token = admin_token
        self.org_id = org_id
        self.session = requests.Session()
        self.path_values: dict[str, list[str]] = {}
        self.user_token = ""
        self.body_values: dict[str, list[str]] = {}

    def call(self, method: str, path: str, *, json_body: Any = None, expect: int = 200) -> Any:
        response = self.session.request(
            method,
            self.url + path,
            json=json_body,
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=60,
        )
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        return response.json() if response.status_code == 200 else None

    def upload(self, provisional: dict[str, Any], source: bytes) -> None:
        """Step 2 of a version or migration: the code, multipart, to the pre-signed URL (no token)."""
        upload = self.session.post(
            provisional["codeUploadUrl"],
            data={**provisional["codeUploadFields"], "content-type": "application/javascript"},
            files={"file": ("machine.ts", source, "application/javascript")},
            timeout=60,
        )
        assert upload.status_code == 204, upload.text

    def deploy(self, machine: str, source: bytes = TOGGLE) -> str:
        provisional = self.call("POST", f"/machines/{machine}/v")
        self.upload(provisional, source)
        signed = provisional["machineVersionId"]
        done = self.call(
            "PUT", f"/machines/{machine}/v/{signed}", json_body={"clientInfo": "fuzz", "makeCurrent": True}
        )
        return str(done["machineVersionId"])

    def seed(self) -> None:
        self.call("POST", "/machines", json_body={"slug": "fuzz-machine", "indexes": ["count"]}, expect=201)
        first = self.deploy("fuzz-machine")
        second = self.deploy("fuzz-machine")
        self.call("POST", "/machines/fuzz-machine", json_body={"slug": "fuzz-instance"})
        self.call("POST", "/machines/fuzz-machine/i/fuzz-instance/events", json_body={"event": "toggle"})
        # an instance and a machine without instances that the fuzzer may delete (it gets their
        # HMAC confirmations), drawn a quarter of the time
        self.call("POST", "/machines/fuzz-machine", json_body={"slug": "fuzz-doomed"})
        self.call("POST", "/machines", json_body={"slug": "fuzz-empty"}, expect=201)
        self.call("POST", "/machines", json_body={"slug": "fuzz-hooks"}, expect=201)
        self.deploy("fuzz-hooks", HOOKS)
        key = self.call("POST", "/keys", json_body={"name": "fuzz-user", "scopes": sorted(ALL_SCOPES)})
        spare = self.call("POST", "/keys", json_body={"name": "fuzz-spare", "use": "ci"})
        for service in ("fuzz-service", "fuzz-doomed-service"):  # the second one for DELETE to find
            self.call(
                "POST",
                "/token-providers",
                json_body={"service": service, "keyId": key["id"], "mapping": {"sub.$": "$.sub"}},
                expect=204,
            )
        self.call(
            "POST",
            "/idps",
            json_body={"aud": "fuzz-aud", "algs": ["HS256"], "key": IDP_KEY, "mapping": {"sub.$": "$.sub"}},
            expect=204,
        )
        # two invitations: PUT /invitations/{code} and PUT /{code} may each accept one
        invitations = [
            self.call("POST", "/org-members", json_body={"email": f"fuzz{n}@example.com", "role": "read"})["code"]
            for n in range(2)
        ]
        # a provisional version whose code is uploaded (PUT .../v/{signed} can finalize it), and
        # one whose upload URL the fuzzer gets
        ready = self.call("POST", "/machines/fuzz-machine/v")
        self.upload(ready, TOGGLE)
        fresh = self.call("POST", "/machines/fuzz-machine/v")
        migration = self.call(
            "POST",
            "/machines/fuzz-machine/migrations",
            json_body={"fromMachineVersionId": first, "toMachineVersionId": second},
        )
        self.upload(migration, MIGRATION)
        self.user_token = sign_token(key["id"], key["key"], {"sub": "fuzz-user"})
        self.path_values = {
            "machine": ["fuzz-machine", "fuzz-machine", "fuzz-machine", "fuzz-empty"],
            "machineName": ["fuzz-hooks"],
            "instance": ["fuzz-instance", "fuzz-instance", "fuzz-instance", "fuzz-doomed"],
            "version": [first, second],
            "signedVersionId": [ready["machineVersionId"]],
            "signedMigrationId": [migration["machineVersionMigrationId"]],
            "keyId": [spare["id"]],
            "service": ["fuzz-doomed-service"],
            "index": ["count"],
            "code": invitations,
            "token": [fresh["codeUploadUrl"].rsplit("/", 1)[1]],
            "orgId": [self.org_id],
            "slug": ["hook"],
        }
        # body fields that name a resource: as generated, or a seeded one
        self.body_values = {
            "keyId": [key["id"]],
            "fromMachineVersionId": [first],
            "toMachineVersionId": [second],
            "targetMachineVersionId": [first, second],
            "machineVersionId": [first, second],
            "hmacSha256OfMachineNameWithMachineNameKey": [confirmation("fuzz-empty", "fuzz-empty")],
            "hmacSha256OfMachineInstanceNameWithMachineNameKey": [confirmation("fuzz-machine", "fuzz-doomed")],
            # a token exchange that succeeds: the seeded identity provider's token, for the seeded
            # token provider's audience
            "audience": [f"https://tokens.statebacked.dev/{self.org_id}/fuzz-service"],
            "subject_token": [
                jwt.encode(
                    {"aud": "fuzz-aud", "sub": "fuzz-user", "iat": int(time.time()), "exp": int(time.time()) + 86_400},
                    base64.urlsafe_b64decode(IDP_KEY + "=" * (-len(IDP_KEY) % 4)),
                    algorithm="HS256",
                )
            ],
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A real `statehost serve` on a free loopback port, its data in a temporary directory."""
    data = tmp_path_factory.mktemp("fuzz-data")
    port = free_port()
    log_path = data / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "listening on" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {log_path.read_text()}")
            time.sleep(0.05)
        credentials = json.loads((data / "admin.json").read_text())
        found = World(f"http://127.0.0.1:{port}", credentials["adminToken"], credentials["orgId"])
        found.seed()
        yield found
        report = os.environ.get("FUZZ_REPORT")
        if report:
            statuses = {f"{who} {op}": dict(c) for (who, op), c in sorted(STATUSES.items())}
            stateful = {f"{who} {op}": dict(c) for (who, op), c in sorted(STATEFUL.items())}
            Path(report).write_text(
                json.dumps(
                    {
                        "statuses": statuses,
                        "by_mode": BY_MODE,
                        "stateful": stateful,
                        "errors": dict(CODES.most_common()),
                        "samples": SAMPLES,
                    },
                    indent=1,
                )
            )
    finally:
        process.terminate()
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        lines = log_path.read_text().splitlines()
        tracebacks = [i for i, line in enumerate(lines) if "Traceback" in line]
        assert not tracebacks, f"the server logged {len(tracebacks)} tracebacks; the first:\n" + "\n".join(
            lines[max(0, tracebacks[0] - 1) : tracebacks[0] + 40]
        )


@pytest.fixture(scope="module")
def api_schema(world: World) -> Any:
    """The document the running server serves, as schemathesis loads it."""
    return schemathesis.openapi.from_url(f"{world.url}/openapi.json")


# Every documented operation but the WebSocket upgrade and the dashboard's static files (the
# real-time protocol and the dashboard have their own tests).
OPERATIONS = [(method, path) for method, path, *_ in ROUTES if path != "/rt" and not path.startswith("/dashboard")]

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _cases(operation: Any, world: World) -> st.SearchStrategy[Any]:
    """Valid and invalid requests, half of them aimed at the seeded world: their path parameters
    name seeded resources and x-statebacked-org-id names the seeded org (an admin may belong to
    several orgs once POST /orgs has been fuzzed)."""
    names = [p.name for p in operation.path_parameters]
    seeded = (
        st.fixed_dictionaries({n: st.sampled_from(world.path_values[n]) for n in names})
        if names and all(n in world.path_values for n in names)
        else st.just({})
    )
    org = {"x-statebacked-org-id": world.org_id}
    plain = [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    if not AIM:
        return st.one_of(*plain)

    def aimed(case: Any) -> st.SearchStrategy[Any]:
        if not isinstance(case.body, dict):
            return st.just(case)
        named = [k for k, v in case.body.items() if k in world.body_values and isinstance(v, str)]
        # all of them seeded together (a token exchange needs both its audience and its subject
        # token), or each one seeded or as generated
        together = st.just({k: world.body_values[k][0] for k in named})
        mixed = st.fixed_dictionaries({k: st.sampled_from([*world.body_values[k], case.body[k]]) for k in named})
        return st.one_of(together, mixed).map(lambda chosen: _with_body(case, chosen))

    return st.one_of(
        *(
            seeded.flatmap(
                lambda fixed, mode=mode: operation.as_strategy(mode, path_parameters=fixed or None, headers=org)
            ).flatmap(aimed)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ),
        *plain,
    )


def _with_body(case: Any, fields: dict[str, str]) -> Any:
    case.body = {**case.body, **fields}
    return case


@pytest.mark.parametrize("identity", ["admin", "end-user"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(api_schema: Any, world: World, identity: str, method: str, path: str) -> None:
    operation = api_schema[path][method]
    token = world.admin_token if identity == "admin" else world.user_token

    @FUZZ_SETTINGS
    @given(case=_cases(operation, world))
    def run(case: Any) -> None:
        response = case.call(base_url=world.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        STATUSES[(identity, f"{method} {path}")][response.status_code] += 1
        mode = case.meta.generation.mode.value if case.meta is not None else "unknown"
        # only the aimed half sends the seeded org's id (generated ones are random)
        aimed = (case.headers or {}).get("x-statebacked-org-id") == world.org_id
        BY_MODE[f"{mode}, {'aimed' if aimed else 'as generated'}"][f"{response.status_code // 100}xx"] += 1
        if mode == "negative" and response.status_code < 300:  # accepted although the document forbids it
            key = f"{method} {path} {response.status_code} accepted-negative"
            CODES[key] += 1
            SAMPLES.setdefault(key, case.as_curl_command()[:600])
        if response.status_code >= 400:
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            key = f"{method} {path} {response.status_code} {answer.get('code')}"
            CODES[key] += 1
            SAMPLES.setdefault(key, f"{answer.get('error')} <- {case.as_curl_command()}"[:600])
        case.validate_response(response, checks=CHECKS)

    run()


# The resources the document's links join (machines, versions, instances, keys, token providers,
# invitations); the HTTP API mapper's paths would draw schemathesis's inferred links to themselves.
STATEFUL_PATHS = r"^/(machines|keys|token-providers|org-members|invitations)"


@pytest.mark.parametrize("identity", ["admin", "end-user"])
def test_stateful_fuzz(api_schema: Any, world: World, identity: str) -> None:
    """Sequences that follow the document's links (create a machine, then its version, instance,
    events...), each response checked as above."""
    token = world.admin_token if identity == "admin" else world.user_token
    base = api_schema.include(path_regex=STATEFUL_PATHS).as_state_machine()

    class Workflow(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}", "x-statebacked-org-id": world.org_id}
            return {"base_url": world.url, "headers": headers, "timeout": 60}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            STATEFUL[(identity, f"{case.method.upper()} {case.path}")][response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            except Exception as exc:
                found.append(exc)
                raise

    found: list[Exception] = []
    try:
        Workflow.run(
            settings=settings(
                max_examples=max(5, MAX_EXAMPLES // 2),
                stateful_step_count=8,
                deadline=None,
                database=None,
                derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
        )
    except Flaky:
        # The server's state moves on between hypothesis's runs, so a sequence replayed (to
        # confirm a failure, or by the choice tree) can take another path; schemathesis's own
        # runner treats this the same way. A check that failed is still the verdict.
        if found:
            raise found[0] from None
    assert STATEFUL, "the stateful run made no call"


def test_most_operations_reach_the_core(world: World) -> None:
    """The document is accurate enough to drive the API: most operations answered 2xx at least once."""
    assert STATUSES, "the fuzz tests above did not run"
    operations: dict[str, Counter[int]] = defaultdict(Counter)
    for (_, op), counts in STATUSES.items():
        operations[op].update(counts)
    reached = sorted(op for op, counts in operations.items() if any(200 <= s < 300 for s in counts))
    total = sum(sum(c.values()) for c in operations.values())
    ok = sum(n for c in operations.values() for s, n in c.items() if 200 <= s < 300)
    print(f"\nfuzz: {len(reached)}/{len(operations)} operations got a 2xx; {ok}/{total} cases were 2xx")
    for mode, counts in sorted(BY_MODE.items()):
        print(f"fuzz: {mode} cases: {dict(sorted(counts.items()))}")
    if AIM:  # FUZZ_AIM=0 measures the document alone; it reaches far fewer (docs/durability.md)
        assert len(reached) >= 0.8 * len(operations), sorted(set(operations) - set(reached))
