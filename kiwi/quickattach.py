"""The everyday `kiwi attach c [-e/-w/-u V]... -- cmd`: a command in a running
container, the hot path of scripts (issue 20).

Read with os alone: listing.py's readers of the data folder and its records, and
what the container's start recorded in runtime.json for entering it
(runtime.entry_facts: its cgroup.procs files, both seccomp programs, kiwi-exec's
capabilities) instead of the cgroup mounts, the seccomp compiler, the cffi
module, the Store, json and pathlib, whose imports were two thirds of an attach.
runtime.json is host root's (mode 0600, in a folder only root reads, written
whole by the start): nothing in the container can write it, and its facts are
those of the start whose init is checked alive. Anything else (not root, a
stopped, frozen or mounted container, a record of another Kiwi build or
without the facts, a name or prefix only the Store answers) raises
listing.Unusual before anything starts, and commands.cmd_attach answers as
it always did.
"""

from __future__ import annotations

import os

from .layout import CONFIG, CONTAINERS, HEX, IMAGE_RECORD, IMAGES, MOUNTS, RUNTIME_RECORD, find_container
from .listing import (
    RunningState,
    Unusual,
    check_layout,
    container_ids,
    data_root,
    read_record,
    refuse_go_data,
)

CGROUP_ROOT = "/sys/fs/cgroup/"


def prepare(args):
    """cmd_attach's `kiwi attach c -- cmd`, read and checked: a function that runs it and
    returns its exit status. Unusual (or an OSError: a container stopped or deleted
    meanwhile) when cmd_attach must answer; nothing has started then."""
    if os.geteuid() != 0 or args.old or args.session or not args.cmd or not args.cmd[0]:
        raise Unusual("cmd_attach answers these")
    from . import execopts

    options = execopts.from_args(args)
    root = data_root()
    check_layout(root)
    refuse_go_data(root)
    cid = resolve(root, args.container)
    record = RunningState(root)(cid)["record"]
    check_private(f"{root}/{MOUNTS}/{cid}/{RUNTIME_RECORD}")
    entry, init_pid = entry_of(record), record["init_pid"]
    config = read_record(f"{root}/{CONTAINERS}/{cid}/{CONFIG}")
    if config.get("id") != cid:
        raise Unusual(f"{cid}'s config names another id")
    image = image_config(root, config)
    start_time = record.get("init_start_time")
    return lambda: run(entry, (init_pid, start_time), config, image, args.cmd, options)


def check_private(path: str) -> None:
    """The record is host root's and nobody else's to write (the start makes it so)."""
    st = os.lstat(path)
    if st.st_uid != 0 or st.st_mode & 0o170022 != 0o100000:
        raise Unusual(f"{path} is not root's private file: runtime.spawn does not read it")


def resolve(root: str, ref: str) -> str:
    """Store.resolve_container's id, name or unique id prefix; Unusual for its errors."""

    def name_of(cid: str):
        try:
            return read_record(f"{root}/{CONTAINERS}/{cid}/{CONFIG}").get("name")
        except FileNotFoundError:
            return None

    matches = find_container(ref, container_ids(root), name_of)
    if len(matches) != 1:
        raise Unusual("no such container, or an ambiguous prefix: Store.resolve_container says so")
    return matches[0]


def entry_of(record: dict):
    """The enter.Entry the start recorded, checked; Unusual when missing, damaged or
    another build's (its seccomp program may differ from this one's)."""
    from .enter import EXEC_NAME, Entry, find_helper

    facts = facts_of(record)
    procs = recorded_procs(facts)
    own_net, socket, caps = (facts.get(key) for key in ("own_net", "handler_socket", "caps"))
    if not (
        isinstance(own_net, bool)
        and isinstance(socket, str)
        and isinstance(caps, str)
        and bool(caps)
        and not caps.strip(HEX)
    ):
        raise Unusual("damaged entry facts")
    try:
        programs = [bytes.fromhex(facts["seccomp"]), bytes.fromhex(facts["seccomp_sysinfo"])]
    except (KeyError, TypeError, ValueError):
        raise Unusual("damaged seccomp programs") from None
    helper = find_helper(EXEC_NAME)
    if helper is None:
        raise Unusual("no kiwi-exec: security.helper_binary_path says where it looked")
    return Entry(procs, own_net, socket, programs.__getitem__, caps, helper)


def facts_of(record: dict) -> dict:
    """runtime.entry_facts as this build's start recorded them; Unusual for another build's."""
    from . import version_text

    facts = record.get("enter")
    if not isinstance(facts, dict) or facts.get("kiwi") != version_text():
        raise Unusual("a start by another Kiwi build: runtime.spawn computes the entry")
    return facts


def recorded_procs(facts: dict) -> list[str]:
    """The cgroup.procs files the start recorded (Cgroup.procs_paths), checked; Unusual if damaged."""
    procs = facts.get("procs")
    if not (
        isinstance(procs, list)
        and procs
        and all(
            isinstance(p, str)
            and p.startswith(CGROUP_ROOT)
            and p.endswith("/cgroup.procs")
            and "/../" not in p
            for p in procs
        )
    ):
        raise Unusual("damaged entry facts")
    return procs


def image_config(root: str, config: dict) -> dict:
    """oci.config.image_config: the image's kept config, {} for images without one."""
    name = config.get("image")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise Unusual("an odd image name: Store.image_dir says so")
    try:
        found = read_record(f"{root}/{IMAGES}/{name}/{IMAGE_RECORD}").get("config")
    except OSError:
        return {}
    return found if isinstance(found, dict) else {}


def run(entry, init: tuple, config: dict, image: dict, argv: list[str], options) -> int:
    """runtime.run_attached: argv with this process's stdio, relayed; its exit status.
    init: the container's (init pid, its start time)."""
    from . import stdio
    from .enter import container_env, enter_container
    from .oci.config import image_exec_defaults

    init_pid, start_time = init
    with stdio.Relay(init_pid, options.user is not None) as relay:
        extra, user_env = options.helper_args(init_pid)
        env = container_env(config, config.get("shell") or None, relay.term)
        # The image's defaults first: kiwi-exec takes the last -w, and attach -e wins over image Env.
        exec_options = image_exec_defaults(image, env) + extra
        pid = enter_container(
            entry, init_pid, start_time, argv, {**env, **user_env}, exec_options, relay.child_fds, relay.pty
        )
        relay.started()
        import gc

        gc.enable()  # the relay may last hours (an interactive shell)
        return relay.run(pid)
