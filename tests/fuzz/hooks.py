"""Schemathesis hooks for tests/fuzz/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

POST /v1/tenants/{name}/procs moves a process into a tenant. The document allows any PID >= 1,
but only a live process can be moved, and the daemon runs in a PID namespace of its own whose
PIDs the fuzzer cannot see. So every *positive* test case of that operation gets the PID of a
fresh sleeper that the harness starts inside the daemon's namespace (through nsenter, joined
to the harness's own cgroup directories first). A fresh one per request, because a generated
`DELETE ...?kill=true` may have killed the previous one. Negative cases keep their generated
PID: the daemon must reject them for the other reason the generator chose.

The sleepers die with the namespace when the harness stops it.
"""

import os
import re
import subprocess

import schemathesis

PROCS_PATH = "/v1/tenants/{name}/procs"

_SPAWN = (
    'for d in "$@"; do echo $$ > "$d/cgroup.procs" || exit 1; done; '
    "sleep 3600 </dev/null >/dev/null 2>&1 & echo $!"
)


def _sleeper() -> int:
    ns = os.environ["TENANTD_FUZZ_NS_PID"]
    dirs = os.environ["TENANTD_FUZZ_CGROUP_DIRS"].split(":")
    out = subprocess.run(
        ["nsenter", "--target", ns, "--pid", "--mount", "--", "sh", "-c", _SPAWN, "sh", *dirs],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(out.stdout.strip())


@schemathesis.hook
def before_call(ctx, case, kwargs):
    op = case.operation
    if op.method.upper() != "POST" or op.path != PROCS_PATH:
        return
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    body = case.body
    # A whole number may come as 38454039.0 too (JSON Schema's integer allows it).
    if isinstance(body, dict) and isinstance(body.get("pid"), (int, float)) and not isinstance(body["pid"], bool):
        body["pid"] = _sleeper()


# 422s of schema-valid requests that are rules across fields or the server's state (see
# schemathesis.toml): (operation label, problem field regex or None for any, detail regex).
_CROSS_FIELD = [
    ("PUT|PATCH", r"memory\.(high|limit)_bytes", r"below the guarantee"),
    ("PUT|PATCH", r"memory\.high_bytes", r"above limit_bytes"),
    ("PUT|PATCH", r"cpu\.limit_pct", r"below the guarantee"),
    ("PUT|PATCH", r"parent", r"cannot be its own parent|would create a cycle|does not exist"),
    ("PUT|PATCH", r"io\.limits\[\d+\]\.device", r"is listed twice"),
    # network.egress entries: what the document's pattern cannot state (bits past the
    # prefix, a port range running backwards, the grammar of IPv6 addresses).
    ("PUT|PATCH", r"network\.egress\.(allow|deny)\[\d+\]", r"bits set past the prefix|runs backwards|is not an IPv4 or IPv6 address|no address"),
    # Placement rules: what the document cannot state (a rule naming no field, names and
    # patterns bounded in UTF-8 bytes, exe paths that are not plain, globs and regexes that do
    # not compile) and the host's state (an unknown user or group name).
    ("PUT|PATCH", r"placement", r"names no process"),
    ("PUT|PATCH", r"placement\.(uids|gids)\[\d+\]", r"there is no (user|group) named|is longer than \d+ bytes"),
    ("PUT|PATCH", r"placement\.exe(\[\d+\])?", r"is longer than \d+ bytes|contains a NUL byte|ends with '/'|has an empty, '\.' or '\.\.' part|is not a valid glob|the globs do not compile"),
    ("PUT|PATCH", r"placement\.cmdline", r"is not a valid regex|compiles to more than|the pattern has \d+ bytes"),
    # maxLength counts characters; the server bounds label values in UTF-8 bytes.
    ("PUT|PATCH", r"labels\..+", r"bytes: label values have at most \d+"),
    ("DELETE", r"move_to", r"use either kill=true or move_to|does not exist|tenant being deleted"),
    ("GET", r"to", r"must be after from"),
    ("GET", r"step", r"more than \d+ points"),
]
# What the host cannot do is not in the document either (devices, v1 files, kernel ranges).
_HOST_KINDS = ("kernel-refused", "unsupported-by-host")


@schemathesis.check
def cross_field_rejection(ctx, response, case):
    """A schema-valid request answered 422 must name a cross-field or host rule."""
    meta = case.meta
    if response.status_code != 422 or meta is None or not meta.generation.mode.is_positive:
        return None
    op = case.operation
    if op.path not in ("/v1/tenants/{name}", "/v1/tenants/{name}/usage", "/v1/reports/sla"):
        return None
    try:
        problem = response.json()
    except ValueError:
        raise AssertionError("422 without a problem+json body")
    kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
    if kind in _HOST_KINDS:
        return None
    field = str(problem.get("field", ""))
    detail = str(problem.get("detail", ""))
    for methods, field_re, detail_re in _CROSS_FIELD:
        if (
            re.fullmatch(methods, op.method.upper())
            and re.fullmatch(field_re, field)
            and re.search(detail_re, detail)
        ):
            return None
    raise AssertionError(
        f"schema-valid data rejected with 422 for a reason the document could state: field {field!r}: {detail}"
    )
