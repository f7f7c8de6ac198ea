"""Hostile HTTP against the running Serve app (real HTTP on 127.0.0.1, session Ray cluster).

Hypothesis draws well over 500 malformed requests: random methods and paths (``..``, ``%2e%2e``,
absolute paths, symlink names), junk and oversized JSON, wrong content types, chunked bodies, bad
credentials, and multipart uploads of hostile tar archives (path escapes, absolute names, symlinks,
hard links, devices, fifos, duplicates, zstd bombs, garbage). The app must answer every one with a
4xx (503 only for overload), never a 5xx; stay healthy; and write nothing outside bundle_dir and
output_dir: the sentinel tree around them, and the places an escaping tar member would land, must be
exactly as before. Deterministic (``derandomize``) and bounded (uploads capped at 64 KiB).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import string
import tarfile
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics.ops.auth import TokenStore
from tests.test_serve import Server, call, running_app

pytestmark = pytest.mark.ray

APP_NAME = "model-forensics-fuzz"
MAX_UPLOAD = 64 * 1024
EXAMPLES = 560  # one request each; the test asserts at least 500 were answered
TIMEOUT_S = 30
MARKER = f"mf-fuzz-escape-{uuid.uuid4().hex[:12]}"  # the name an escaping tar member or path would leave behind

ROUTES = {("POST", "/v1/analyze"), ("POST", "/v1/triage"), ("GET", "/metrics"), ("HEAD", "/metrics")}
RESULTS = re.compile(r"^/v1/results/(?:(?!%2[fF])[^/?#])+$")  # %2F decodes to "/": then no route matches
HOSTILE_NAMES = [
    "../x",
    "../../outside/secret",
    "/etc/passwd",
    "escape",
    "escape/manifest.json",
    "link.tar",
    "incidents/../../outside",
    "..",
    "./..",
    "incidents/..",
    "C:/Windows",
    "a\\..\\b",
    "inc\x00",
    "\x1b[31m",
    "%2e%2e/%2e%2e",
    "//etc",
    "~root",
    "uploads/../../outside",
    "a" * 2000,
]
SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E%2F",
    "%2F",
    "%00",
    "etc",
    "passwd",
    "v1",
    "analyze",
    "triage",
    "results",
    "metrics",
    "healthz",
    "",
    "escape",
    "link.tar",
    "~",
    "..%2f..%2f",
    "/tmp",
    "C:",
    "%5c..%5c",
    MARKER,
]
TEXT = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " é✓", max_size=40)
HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " \t", max_size=120)


@dataclass(frozen=True)
class Probe:
    """One request: what to send, which credential, and whether it is malformed by construction (-> 4xx)."""

    method: str
    path: str
    credential: str  # admin | analyst | viewer | none | raw:<header value>
    body: bytes | None = None
    content_type: str | None = None
    chunked: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    hostile: bool = True
    what: str = ""


@dataclass
class Tally:
    answers: list[tuple[str, int]] = field(default_factory=list)  # (probe.what, status)


# -- strategies ----------------------------------------------------------------------------------
BAD_CREDENTIALS = st.one_of(
    st.just("none"),
    st.builds(lambda v: f"raw:Bearer {v}", HEADER_TEXT),
    st.builds(lambda a, b, c: f"raw:Bearer {a}.{b}.{c}", *[st.text(string.ascii_letters + "-_=", max_size=60)] * 3),
    st.sampled_from(["raw:Basic YWRtaW46YWRtaW4=", "raw:Bearer", "raw:bearer  ", "raw:Token abc", "raw:" + "A" * 4000]),
)
# Mostly valid tokens, so most requests get past auth to the code that parses and confines.
CREDENTIALS = st.sampled_from(["admin"] * 4 + ["analyst"] * 2 + ["viewer"] + ["bad"] * 3).flatmap(
    lambda c: BAD_CREDENTIALS if c == "bad" else st.just(c)
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["route", "segments", "results", "long", "query"]))
    if kind == "route":
        return draw(
            st.sampled_from(
                [
                    "/v1/analyze",
                    "/v1/triage",
                    "/metrics",
                    "/healthz",
                    "/docs",
                    "/openapi.json",
                    "/v1/results/" + uuid.uuid4().hex,
                    "/",
                    "/v1",
                    "/v1/",
                ]
            )
        )
    if kind == "results":
        return "/v1/results/" + draw(st.one_of(st.sampled_from(HOSTILE_NAMES + SEGMENTS), TEXT))
    if kind == "long":
        return "/" + "a/" * draw(st.integers(1, 2000))
    parts = draw(st.lists(st.one_of(st.sampled_from(SEGMENTS), TEXT), min_size=1, max_size=8))
    path = "/" + "/".join(parts)
    return path + ("?" + draw(TEXT) if kind == "query" else "")


def encode(path: str) -> str:
    """What a raw client puts on the request line: dot segments and %-escapes kept, the rest escaped."""
    return urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~?#")


@st.composite
def route_probes(draw: st.DrawFn) -> Probe:
    method = draw(
        st.one_of(
            st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]),
            st.from_regex(r"\A[A-Z]{1,12}\Z"),
        )
    )
    path = encode(draw(paths()))
    body = draw(st.one_of(st.none(), st.binary(max_size=512)))
    # Only the open routes (and authorized reads) may answer 2xx; a 404/405/401/... is what the rest must get.
    benign = (method, path) in {
        ("GET", "/healthz"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("HEAD", "/healthz"),
        ("HEAD", "/docs"),
        ("HEAD", "/openapi.json"),
        ("GET", "/metrics"),
        ("HEAD", "/metrics"),
        ("POST", "/v1/triage"),
    } or bool(RESULTS.match(path))
    return Probe(
        method,
        path,
        draw(CREDENTIALS),
        body,
        draw(st.sampled_from([None, "application/json"])),
        hostile=not benign,
        what="route",
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def json_probes(draw: st.DrawFn) -> Probe:
    route = draw(st.sampled_from(["/v1/analyze", "/v1/triage"]))
    key = "bundle" if route == "/v1/analyze" else "directory"
    # bundle_dir holds no loadable bundle and no benign baseline: each of these names ends in a 4xx
    hostile_name = draw(st.sampled_from([*HOSTILE_NAMES, ".", "incidents", "incidents/broken", "incidents/nope"]))
    kind = draw(
        st.sampled_from(
            [
                "hostile-name",
                "hostile-name",
                "hostile-name",
                "hostile-baseline",
                "random-json",
                "extra-key",
                "junk",
                "deep",
                "huge",
                "bad-utf8",
                "wrong-type",
            ]
        )
    )
    body: Any
    if kind == "hostile-name":
        body = json.dumps({key: hostile_name}).encode()
    elif kind == "hostile-baseline":
        body = json.dumps(
            {key: "incidents" if key == "directory" else "incidents/broken", "baseline": hostile_name}
        ).encode()
    elif kind == "random-json":
        body = json.dumps(draw(JSON_VALUES)).encode()
    elif kind == "extra-key":
        body = json.dumps(
            {key: "incidents", draw(TEXT.filter(lambda k: k not in ("bundle", "directory", "baseline"))): 1}
        ).encode()
    elif kind == "junk":
        body = draw(st.binary(max_size=2048))
    elif kind == "deep":
        depth = draw(st.integers(100, 30_000))
        body = b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    elif kind == "huge":
        body = json.dumps({key: "x" * draw(st.integers(70_000, 300_000))}).encode()
    elif kind == "bad-utf8":
        body = b'{"' + key.encode() + b'": "\xff\xfe\xc3("}'
    else:
        body = json.dumps({key: draw(st.one_of(st.integers(), st.lists(TEXT, max_size=3), st.booleans()))}).encode()
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 6
            + [
                None,
                "application/json; charset=utf-16",
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/xml",
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "*/*",
            ]
        )
    )
    # Every analyze request is hostile (bundle_dir holds no loadable bundle); triage only with a bad body.
    hostile = route == "/v1/analyze" or kind != "random-json" or content_type not in ("application/json", None)
    return Probe(
        "POST",
        route,
        draw(CREDENTIALS),
        body,
        content_type,
        chunked=draw(st.booleans()),
        hostile=hostile,
        what=f"json:{kind}",
    )


# hostile tar members: (kind, name, extra)
def _member_names(top: Path) -> st.SearchStrategy[str]:
    escapes = [
        f"../{MARKER}",
        f"../../{MARKER}",
        f"../../../../../../{MARKER}",
        f"{top}/outside/{MARKER}",
        f"/{MARKER}",
        f"ok/../../{MARKER}",
        f"..\\{MARKER}",
        f"C:/{MARKER}",
        f"ok/\x01{MARKER}",
        "/etc/cron.d/x",
    ]
    plain = ["manifest.json", "bundle/manifest.json", "bundle/activations.arrow", "a", "a/b", "./manifest.json"]
    return st.one_of(st.sampled_from(escapes), st.sampled_from(plain), TEXT.filter(bool))


@st.composite
def tar_archives(draw: st.DrawFn, top: Path) -> tuple[bytes, str]:
    """A hostile archive and the file name it is uploaded as."""
    names = _member_names(top)
    buf = io.BytesIO()
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(
                st.sampled_from(
                    ["file", "file", "symlink", "hardlink", "chr", "blk", "fifo", "dir", "big", "link-then-write"]
                )
            )
            name = draw(names)
            info = tarfile.TarInfo(name)
            data = b""
            if kind in ("file", "big"):
                data = draw(st.binary(max_size=256)) if kind == "file" else b"\0" * 400_000
                info.size = len(data)
            elif kind in ("symlink", "link-then-write"):
                info.type, info.linkname = tarfile.SYMTYPE, draw(st.sampled_from([str(top / "outside"), "../..", "/"]))
            elif kind == "hardlink":
                info.type, info.linkname = (
                    tarfile.LNKTYPE,
                    draw(st.sampled_from([str(top / "outside" / "passwd"), "/etc/passwd", "manifest.json"])),
                )
            elif kind in ("chr", "blk"):
                info.type, info.devmajor, info.devminor = (tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE), 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.type = tarfile.DIRTYPE
            try:
                tar.addfile(info, io.BytesIO(data) if data else None)
                if kind == "link-then-write":
                    inner = tarfile.TarInfo(f"{name}/{MARKER}")
                    inner.size = 4
                    tar.addfile(inner, io.BytesIO(b"pwnd"))
            except (ValueError, UnicodeError):  # names tarfile itself cannot write in this format
                continue
    raw = buf.getvalue()
    packing = draw(st.sampled_from(["tar", "tar", "tar", "zst", "bomb", "truncated", "garbage"]))
    if packing == "bomb":  # tiny upload, 2 MB once extracted: over the extraction limit (4 x the upload limit)
        bomb = io.BytesIO()
        with tarfile.open(fileobj=bomb, mode="w") as tar:
            info = tarfile.TarInfo("bundle/activations.arrow")
            info.size = 2_000_000
            tar.addfile(info, io.BytesIO(b"\0" * info.size))
        raw, packing = bomb.getvalue(), "zst"
    if packing == "zst":
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(raw)
        raw = sink.getvalue().to_pybytes()
    elif packing == "truncated":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif packing == "garbage":
        raw = draw(st.binary(min_size=1, max_size=4096))
    suffix = ".tar.zst" if packing == "zst" else ".tar"
    filename = draw(
        st.sampled_from(
            [
                f"x{suffix}",
                f"../../{MARKER}{suffix}",
                f"/etc/{MARKER}{suffix}",
                f"escape/{MARKER}{suffix}",
                f"..%2f{MARKER}{suffix}",
            ]
        )
    )
    return raw, filename


@st.composite
def upload_probes(draw: st.DrawFn, top: Path) -> Probe:
    """Mostly a well-formed upload by an analyst (so the archive reaches extraction), else a broken envelope."""
    archive, filename = draw(tar_archives(top))
    if draw(st.integers(0, 3)) > 0:
        body, kind = _multipart({}, [(filename, archive)], closed=True)
        return Probe("POST", "/v1/analyze", draw(st.sampled_from(["admin", "analyst"])), body, kind, what="upload")
    fields = draw(
        st.dictionaries(
            st.sampled_from(["baseline", "bundle", "file", "x" * 100]), st.sampled_from(HOSTILE_NAMES[:10]), max_size=3
        )
    )
    name = draw(st.sampled_from([filename, "x.zip", "", "x.tar\r\nX-Evil: 1"]))
    body, kind = _multipart(fields, [(name, archive)] * draw(st.sampled_from([0, 1, 2])), closed=draw(st.booleans()))
    if draw(st.booleans()):
        body += b"\0" * (MAX_UPLOAD + 70_000)  # over the upload limit
    boundary = kind.split("boundary=")[1]
    declared = draw(
        st.sampled_from(
            [
                kind,
                "multipart/form-data",
                "multipart/form-data; boundary=wrong",
                f"multipart/mixed; boundary={boundary}",
                f"{kind}; charset=utf-16",
            ]
        )
    )
    return Probe(
        "POST", "/v1/analyze", draw(CREDENTIALS), body, declared, chunked=draw(st.booleans()), what="upload-envelope"
    )


def _multipart(fields: dict[str, str], files: list[tuple[str, bytes]], *, closed: bool) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for filename, content in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/x-tar\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    if closed:
        out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def probes(top: Path) -> st.SearchStrategy[Probe]:
    return st.one_of(route_probes(), json_probes(), json_probes(), upload_probes(top), upload_probes(top))


# -- the running app and the sentinel tree -------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_app(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """bundle_dir (a broken bundle, symlinks out) and output_dir inside a sentinel tree that must not change."""
    top = tmp_path_factory.mktemp("fuzz")
    root, results, outside = top / "bundles", top / "results", top / "outside"
    (root / "incidents" / "broken").mkdir(parents=True)
    (root / "incidents" / "broken" / "manifest.json").write_text('{"schema": "model-forensics/bundle@1"}')
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "manifest.json").write_text('{"schema": "model-forensics/bundle@1", "secret": true}')
    (outside / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    with tarfile.open(outside / "secret.tar", "w") as tar:
        tar.add(outside / "secret", arcname="secret")
    (root / "escape").symlink_to(outside / "secret", target_is_directory=True)
    (root / "link.tar").symlink_to(outside / "secret.tar")
    results.mkdir()
    auth = top / "auth"
    store = TokenStore(auth / "tokens.json")
    tokens = {role: store.add(f"fuzz-{role}", role) for role in ("admin", "analyst", "viewer")}
    (auth / "audit.log").touch()  # the app appends to it; created now so the sentinel snapshot can skip it
    args = {
        "bundle_dir": str(root),
        "output_dir": str(results),
        "tokens_file": str(auth / "tokens.json"),
        "audit_log": str(auth / "audit.log"),
        "max_upload_bytes": MAX_UPLOAD,
        "num_gpus": 0,
        "analyzer_num_cpus": 0.5,
        "ingress_num_cpus": 0.25,
    }
    with running_app(args, APP_NAME) as base:
        yield {
            "base": base,
            "top": top,
            "root": root,
            "results": results,
            "tokens": tokens,
            "audit": auth / "audit.log",
        }


def snapshot(top: Path, skip: tuple[Path, ...]) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``top`` except ``skip``: type, mode, size, mtime and content hash; symlinks not followed."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in [*dirnames, *filenames]:
            path = here / name
            if path in skip:
                continue
            st_ = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
            link = os.readlink(path) if path.is_symlink() else None
            seen[str(path.relative_to(top))] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, digest, link)
    return seen


def escape_sites(top: Path) -> list[Path]:
    """Where a member or name escaping its directory would land (the extraction dir lives in the temp dir)."""
    tmp = Path(tempfile.gettempdir())
    return [
        tmp / MARKER,
        tmp.parent / MARKER,
        Path("/") / MARKER,
        top / MARKER,
        top.parent / MARKER,
        top / "outside" / MARKER,
        Path("/etc") / MARKER,
    ]


def send(base: str, probe: Probe, tokens: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    headers = dict(probe.headers)
    if probe.credential.startswith("raw:"):
        headers["Authorization"] = probe.credential[4:]
    elif probe.credential != "none":
        headers["Authorization"] = f"Bearer {tokens[probe.credential]}"
    if probe.content_type is not None:
        headers["Content-Type"] = probe.content_type
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        if probe.chunked and probe.body is not None:
            headers["Transfer-Encoding"] = "chunked"
            chunks = [probe.body[i : i + 8192] for i in range(0, len(probe.body), 8192)] or [b""]
            conn.request(probe.method, probe.path, body=iter(chunks), headers=headers, encode_chunked=True)
        else:
            conn.request(probe.method, probe.path, body=probe.body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_answer(probe: Probe, status: int, headers: dict[str, str], data: bytes) -> None:
    where = f"{probe.what} {probe.method} {probe.path[:120]!r} cred={probe.credential[:40]!r}: {status} {data[:300]!r}"
    assert status < 500 or status == 503, where
    if status == 503:
        assert headers.get("retry-after"), where
    if probe.hostile:
        assert 400 <= status < 500 or status == 503, where
    route = (probe.method, probe.path.split("?")[0])
    protected = route in ROUTES or (probe.method in ("GET", "HEAD") and RESULTS.match(route[1]))
    if protected and probe.credential.startswith(("raw:", "none")):
        assert status == 401, f"a protected route must refuse bad credentials before anything else: {where}"
    if status >= 400 and probe.method != "HEAD" and headers.get("content-type", "").startswith("application/json"):
        assert "error" in json.loads(data), where


# -- the test --------------------------------------------------------------------------------------
def test_hostile_requests_get_4xx_and_leave_no_trace(fuzz_app: dict[str, Any]) -> None:
    top, root, results = fuzz_app["top"], fuzz_app["root"], fuzz_app["results"]
    skip = (root, results, fuzz_app["audit"])
    before = snapshot(top, skip)
    temp_before = {p.name for p in Path(tempfile.gettempdir()).glob("forensics-bundle-*")}
    tally = Tally()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(probe=probes(top))
    def one(probe: Probe) -> None:
        status, headers, data = send(fuzz_app["base"], probe, fuzz_app["tokens"])
        tally.answers.append((probe.what, status))

        check_answer(probe, status, headers, data)

    one()

    assert len(tally.answers) >= 500, f"only {len(tally.answers)} requests were answered"
    # the fuzz must keep reaching the deep checks, not just bounce off auth or the envelope
    assert tally.answers.count(("upload", 400)) >= 50, "too few archives reached the extraction checks"
    assert sum(what.startswith("json") and status in (400, 404, 422) for what, status in tally.answers) >= 20
    assert call(Server(fuzz_app["base"]), "GET", "/healthz")[0] == 200, "the server must still be up"
    assert snapshot(top, skip) == before, "something outside bundle_dir/output_dir changed"
    assert not [p for p in escape_sites(top) if os.path.lexists(p)], "a hostile name escaped"
    uploads = root / "uploads"
    assert not (uploads.exists() and list(uploads.iterdir())), "refused uploads must be deleted"
    stored = [p.name for p in results.iterdir() if p.name != "model_forensics.log"]  # the service log is expected
    assert stored == [], "no analysis can succeed on these inputs"
    leaked = {p.name for p in Path(tempfile.gettempdir()).glob("forensics-bundle-*")} - temp_before
    assert not leaked, f"extraction dirs left behind: {sorted(leaked)[:5]}"
    assert fuzz_app["audit"].read_text().count("\n") > 0  # refusals of audited actions were logged
