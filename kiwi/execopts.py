"""What `attach -e/-w/-u` change about a command run in a container, like `docker exec`.

User and group names are looked up in the container's own /etc/passwd and
/etc/group, opened beneath its root: a symlink there resolves inside the
container (never on the host), and only a regular file is read, bounded."""

from __future__ import annotations

import os
import stat

from .errors import KiwiError

MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
MAX_DB_BYTES = 4 << 20
MAX_GROUPS = 64  # kiwi-exec's limit (cffi_build/exec.c)


class ExecOptions:
    """env: NAME -> VALUE added last; workdir: absolute path inside; user: 'user[:group]'."""

    def __init__(self, env: dict | None = None, workdir: str | None = None, user: str | None = None):
        self.env = env or {}
        self.workdir = workdir
        self.user = user

    def helper_args(self, init_pid: int) -> tuple[list[str], dict]:
        """kiwi-exec options and the environment entries that go with them."""
        args: list[str] = []
        env: dict = {}
        if self.workdir:
            args += ["-w", self.workdir]
        if self.user:
            user = resolve_user(init_pid, self.user)
            args += ["-u", str(user["uid"]), "-g", str(user["gid"])]
            args += ["-G", ",".join(map(str, user["groups"]))] if user["groups"] else []
            env.update(HOME=user["home"], USER=user["name"], LOGNAME=user["name"])
        env.update(self.env)  # the user's -e wins, as in docker exec
        return args, env


def from_args(args) -> ExecOptions:
    """attach's -e, -w and -u (argparse's namespace, or cli.quick_attach_args')."""
    return ExecOptions(parse_env(args.env), parse_workdir(args.workdir), parse_user_spec(args.user))


def parse_env(items: list[str] | None) -> dict:
    env = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or "\0" in item:
            raise KiwiError(f"invalid --env {item!r}: give NAME=VALUE, e.g. -e LANG=C.UTF-8")
        env[name] = value
    return env


def parse_workdir(path: str | None) -> str | None:
    if path is not None and (not path.startswith("/") or "\0" in path):
        raise KiwiError(f"invalid --workdir {path!r}: give an absolute path inside the container")
    return path


def parse_user_spec(spec: str | None) -> str | None:
    if spec is None:
        return None
    user, _, group = spec.partition(":")
    if not user or ":" in group or "\0" in spec or (":" in spec and not group):
        raise KiwiError(f"invalid --user {spec!r}: give user, uid, user:group or uid:gid")
    return spec


# --- the container's user database --------------------------------------------------


def read_container_file(init_pid: int, path: str) -> str:
    """A small regular file of the running container, read beneath its root; '' when missing."""
    from . import syscalls as sc

    root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = sc.openat2(
            root,
            path.lstrip("/"),
            os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            0,
            sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS,
        )
    except FileNotFoundError:
        return ""
    except OSError as e:  # ELOOP: a link through /proc's magic links, ...
        raise KiwiError(f"cannot read the container's {path}: {e.strerror}") from None
    finally:
        os.close(root)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KiwiError(f"the container's {path} is not a regular file; cannot look up users in it")
        data = os.read(fd, MAX_DB_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_DB_BYTES:
        raise KiwiError(f"the container's {path} is larger than {MAX_DB_BYTES >> 20} MiB; not read")
    return data.decode(errors="replace")


def records(text: str, fields: int) -> list[list[str]]:
    """The colon-separated lines with at least `fields` fields and a numeric id in the third."""
    rows = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= fields and parse_id(parts[2]) is not None:
            rows.append(parts)
    return rows


def parse_id(text: str) -> int | None:
    if text.isascii() and text.isdigit() and int(text) <= MAX_ID:
        return int(text)
    return None


def resolve_user(init_pid: int, spec: str) -> dict:
    """'user[:group]' -> {uid, gid, groups, name, home} as the container's files say.
    A number needs no entry (like docker: gid 0, HOME /)."""
    user, _, group = spec.partition(":")
    passwd = records(read_container_file(init_pid, "/etc/passwd"), 7)
    groups = records(read_container_file(init_pid, "/etc/group"), 4)
    entry = next((p for p in passwd if p[0] == user), None) or next(
        (p for p in passwd if p[2] == user and parse_id(user) is not None), None
    )
    if entry is None and parse_id(user) is None:
        raise KiwiError(f"no user {user!r} in the container's /etc/passwd; give a name it has, or a uid")
    uid = int(entry[2]) if entry else parse_id(user)
    gid = int(entry[3]) if entry and parse_id(entry[3]) is not None else 0
    name = entry[0] if entry else str(uid)
    supplementary = [int(g[2]) for g in groups if entry and name in g[3].split(",")]
    if group:
        gid = resolve_group(groups, group)
        supplementary = []  # docker exec -u user:group: that group alone
    member_of = sorted({gid, *supplementary})
    if len(member_of) > MAX_GROUPS:
        raise KiwiError(f"user {name} is in more than {MAX_GROUPS} groups; give one with --user {name}:group")
    return {"uid": uid, "gid": gid, "groups": member_of, "name": name, "home": entry[5] if entry else "/"}


def resolve_group(groups: list[list[str]], group: str) -> int:
    entry = next((g for g in groups if g[0] == group), None)
    if entry is not None:
        return int(entry[2])
    gid = parse_id(group)
    if gid is None:
        raise KiwiError(f"no group {group!r} in the container's /etc/group; give a name it has, or a gid")
    return gid
