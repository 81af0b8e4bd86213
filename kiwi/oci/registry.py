"""The OCI Distribution API v2 over urllib: manifests, blobs, uploads, auth.

HTTPS always, plain HTTP only for a loopback registry or with --insecure.
Auth: the anonymous (or credentialed) Bearer token flow from a 401's
WWW-Authenticate challenge, or Basic with credentials from --user or
~/.docker/config.json. Credentials never follow a redirect to another host,
and only blob downloads may be redirected at all (registries send them to a
CDN; the digest, not the host, vouches for the bytes).
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from ..errors import KiwiError
from .reference import DOCKER_HUB, is_loopback

TIMEOUT = 60
MANIFEST_LIMIT = 4 << 20
TOKEN_LIMIT = 1 << 20
ERROR_LIMIT = 64 << 10
UPLOAD_CHUNK = 16 << 20

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)


class _RedirectPolicy(urllib.request.HTTPRedirectHandler):
    """Blob downloads may move to another host, without credentials; nothing else may."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        old, target = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
        if (old.scheme, old.netloc) != (target.scheme, target.netloc):
            if not getattr(req, "kiwi_may_leave", False):
                raise KiwiError(
                    f"the registry {old.netloc} redirected a request to another host"
                    f" ({target.netloc}); refusing it"
                )
            if target.scheme != "https" and not (
                getattr(req, "kiwi_insecure", False) or is_loopback(target.netloc)
            ):
                raise KiwiError(f"the registry {old.netloc} redirected a download to plain http; refusing it")
            new.remove_header("Authorization")
        new.kiwi_may_leave = getattr(req, "kiwi_may_leave", False)  # type: ignore[attr-defined]
        new.kiwi_insecure = getattr(req, "kiwi_insecure", False)  # type: ignore[attr-defined]
        return new


def _opener():
    return urllib.request.build_opener(_RedirectPolicy())


class Registry:
    """One registry host, with the token it last obtained."""

    def __init__(self, host: str, registry_name: str, insecure: bool = False, credentials=None):
        self.host = host
        self.insecure = insecure
        self.scheme = "http" if insecure or is_loopback(host) else "https"
        self.credentials = credentials or docker_config_credentials(registry_name)
        self.authorization: str | None = None
        self.opener = _opener()

    # -- requests
    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    def request(self, method, path_or_url, scopes, headers=None, data=None, may_leave=False):
        """The response of one request, authenticating once on a 401. HTTP errors raise HTTPError."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        for attempt in (1, 2):
            req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
            req.kiwi_may_leave, req.kiwi_insecure = may_leave, self.insecure  # type: ignore[attr-defined]
            if self.authorization:
                req.add_unredirected_header("Authorization", self.authorization)
            try:
                return self.opener.open(req, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                if e.code != 401 or attempt == 2:
                    raise
                challenge = e.headers.get("WWW-Authenticate", "")
                e.close()
                self.authenticate(challenge, scopes)
                if hasattr(data, "seek"):
                    data.seek(0)
            except (urllib.error.URLError, OSError) as e:
                raise KiwiError(
                    f"cannot reach the registry {self.host}: {_reason(e)}; check the name and the network"
                ) from None
        raise AssertionError("unreachable")

    def authenticate(self, challenge: str, scopes) -> None:
        kind, params = parse_challenge(challenge)
        if kind == "bearer":
            self.authorization = f"Bearer {self.fetch_token(params, scopes)}"
        elif kind == "basic" and self.credentials:
            self.authorization = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        else:
            raise KiwiError(
                f"the registry {self.host} wants a login; give --user NAME"
                " or log in with 'docker login' (~/.docker/config.json)"
            )

    def fetch_token(self, params: dict, scopes) -> str:
        realm = params.get("realm", "")
        target = urllib.parse.urlsplit(realm)
        if target.scheme not in ("https", "http") or not target.netloc:
            raise KiwiError(f"the registry {self.host} names no usable token service ({realm!r})")
        plain_ok = self.insecure or is_loopback(target.netloc)
        if target.scheme == "http" and not plain_ok:
            raise KiwiError(f"the registry {self.host} sends us to a plain-http token service; refusing it")
        query = [("service", params["service"])] if params.get("service") else []
        wanted = list(scopes) + [s for s in params.get("scope", "").split(" ") if s and s not in scopes]
        query += [("scope", s) for s in wanted]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)
        req.kiwi_may_leave, req.kiwi_insecure = False, self.insecure  # type: ignore[attr-defined]
        if self.credentials:
            req.add_unredirected_header(
                "Authorization", "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            )
        try:
            with self.opener.open(req, timeout=TIMEOUT) as response:
                body = read_limited(response, TOKEN_LIMIT, f"the token from {target.netloc}")
        except urllib.error.HTTPError as e:
            hint = " (wrong --user or docker login?)" if e.code in (401, 403) else ""
            raise KiwiError(f"the token service {target.netloc} refused us (HTTP {e.code}){hint}") from None
        except (urllib.error.URLError, OSError) as e:
            raise KiwiError(f"cannot reach the token service {target.netloc}: {_reason(e)}") from None
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise KiwiError(f"the token service {target.netloc} gave no usable token")
        return token

    # -- manifests and blobs
    def get_manifest(self, repository: str, version: str) -> tuple[bytes, str, str | None]:
        """(bytes, media type, the digest the registry claims) of a manifest or index."""
        try:
            with self.request(
                "GET", f"{repository}/manifests/{version}", [pull_scope(repository)], {"Accept": ACCEPT}
            ) as response:
                body = read_limited(response, MANIFEST_LIMIT, f"the manifest of {repository}:{version}")
                media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
                return body, media_type, response.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as e:
            raise self.http_error(e, f"the image {repository}:{version}") from None

    def open_blob(self, repository: str, digest: str, offset: int = 0):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return self.request(
                "GET", f"{repository}/blobs/{digest}", [pull_scope(repository)], headers, may_leave=True
            )
        except urllib.error.HTTPError as e:
            raise self.http_error(e, f"the blob {digest} of {repository}") from None

    def has_blob(self, repository: str, digest: str, scopes) -> bool:
        try:
            with self.request("HEAD", f"{repository}/blobs/{digest}", scopes):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise self.http_error(e, f"the blob {digest} of {repository}") from None

    def upload_blob(
        self, repository: str, digest: str, path, size: int, mount_from: str | None = None
    ) -> str:
        """Upload a blob unless the registry has it; returns 'exists', 'mounted' or 'uploaded'."""
        scopes = [push_scope(repository)] + ([pull_scope(mount_from)] if mount_from else [])
        if self.has_blob(repository, digest, scopes):
            return "exists"
        start = f"{repository}/blobs/uploads/"
        if mount_from:
            start += "?" + urllib.parse.urlencode({"mount": digest, "from": mount_from})
        try:
            with self.request("POST", start, scopes, {"Content-Length": "0"}, data=b"") as response:
                if response.status == 201:
                    return "mounted"
                location = self.location(response)
            with open(path, "rb") as f:
                sent = 0
                while sent < size or size == 0:
                    chunk = f.read(UPLOAD_CHUNK)
                    if not chunk:
                        break
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                        "Content-Length": str(len(chunk)),
                    }
                    with self.request("PATCH", location, scopes, headers, data=chunk) as response:
                        location = self.location(response)
                    sent += len(chunk)
            final = location + ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
            with self.request("PUT", final, scopes, {"Content-Length": "0"}, data=b""):
                return "uploaded"
        except urllib.error.HTTPError as e:
            raise self.http_error(e, f"the upload of {digest} to {repository}") from None

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str | None:
        try:
            with self.request(
                "PUT",
                f"{repository}/manifests/{tag}",
                [push_scope(repository)],
                {"Content-Type": media_type},
                data=body,
            ) as response:
                return response.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as e:
            raise self.http_error(e, f"the manifest {repository}:{tag}") from None

    def location(self, response) -> str:
        """Absolute upload URL from a Location header, on this registry only."""
        location = response.headers.get("Location")
        if not location:
            raise KiwiError(f"the registry {self.host} gave no upload location")
        absolute = urllib.parse.urljoin(self.url(""), location)
        target = urllib.parse.urlsplit(absolute)
        if target.netloc != self.host or target.scheme != self.scheme:
            raise KiwiError(
                f"the registry {self.host} sent the upload to another host ({target.netloc}); refusing it"
            )
        return absolute

    def http_error(self, e: urllib.error.HTTPError, what: str) -> KiwiError:
        detail = ""
        try:
            errors = json.loads(e.read(ERROR_LIMIT)).get("errors") or []
            detail = "; ".join(str(x.get("message") or x.get("code")) for x in errors[:2])
        except (ValueError, AttributeError, OSError):
            pass
        e.close()
        if e.code == 404:
            return KiwiError(f"the registry {self.host} has no {what} (HTTP 404); check the name and tag")
        if e.code in (401, 403):
            return KiwiError(
                f"the registry {self.host} refused access to {what} (HTTP {e.code}); log in with --user or docker login"
            )
        return KiwiError(
            f"the registry {self.host} failed on {what} (HTTP {e.code}{': ' + detail if detail else ''})"
        )


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def parse_challenge(header: str) -> tuple[str, dict]:
    """'Bearer realm="...",service="..."' -> ('bearer', {...})."""
    kind, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return kind.lower(), params


def read_limited(response, limit: int, what: str) -> bytes:
    body = response.read(limit + 1)
    if len(body) > limit:
        raise KiwiError(f"{what} is larger than {limit >> 20} MiB; refusing it")
    return body


def docker_config_credentials(registry: str):
    """(user, password) for the registry from $DOCKER_CONFIG or ~/.docker/config.json, or None."""
    folder = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    try:
        with open(os.path.join(folder, "config.json"), "rb") as f:
            auths = json.loads(f.read(1 << 20)).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    keys = [registry, f"https://{registry}", f"https://{registry}/v1/", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for key in keys:
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                continue
            return user, password
    return None


def _reason(e) -> str:
    return str(getattr(e, "reason", None) or e)
