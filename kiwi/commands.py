"""One function per command. They parse nothing (cli.py did), call the layers,
and print. Layer modules are imported here, inside the commands, to keep
start-up fast."""

from __future__ import annotations

import json
import os
import sys

from .errors import KiwiError
from .sizes import format_size
from .store import Store


def out(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(f"kiwi: {text}", file=sys.stderr, flush=True)


def progress_bar(label: str):
    from .progress import Progress

    return Progress(label)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out(fmt.format(*headers).rstrip())
    for row in rows:
        out(fmt.format(*row).rstrip())


# --- list ---------------------------------------------------------------------


def container_rows(store: Store) -> list[dict]:
    from . import idmap, runtime
    from .containers import storage_summary

    rows = []
    for cid in store.container_ids():
        try:
            config = store.container_config(cid)
        except KiwiError:
            continue
        state = runtime.status(store, cid)
        used, limit = storage_summary(store, config, state.get("init_pid"))
        rows.append(
            {
                "id": cid,
                "name": config.get("name"),
                "status": state["status"],
                "image": config.get("image"),
                "ipv4": None if config.get("network") == "host" else config.get("ipv4"),
                "memory": config.get("memory"),
                "cpu": config.get("cpu"),
                "storage_used": used,
                "storage_limit": limit,
                "storage_sparse": limit is not None and bool(config.get("storage_sparse")),
                "network": config.get("network", "separate"),
                "mount": state.get("mount_target"),
                "cgroup": state.get("cgroup"),
                "privileged": idmap.is_privileged(config),
            }
        )
    return rows


def image_rows(store: Store) -> list[dict]:
    from . import images

    return [
        {"name": i.get("name"), "size": i.get("size"), "source": i.get("source"), "created": i.get("created")}
        for i in images.list_images(store)
    ]


def show_containers(rows: list[dict]) -> None:
    def limit(v, fmt):
        return "host" if v is None else fmt(v)

    table = []
    for r in rows:
        storage = f"{format_size(r['storage_used'])}/{limit(r['storage_limit'], format_size)}"
        storage += " sparse" if r.get("storage_sparse") else ""
        status = r["status"] + (f" ({r['cgroup']})" if r.get("cgroup") else "")
        table.append(
            [
                r["id"],
                r["name"] or "-",
                status,
                r["image"] or "-",
                r["ipv4"] or ("host" if r["network"] == "host" else "-"),
                limit(r["memory"], format_size),
                limit(r["cpu"], str),
                storage,
                r["network"],
                "yes" if r["privileged"] else "no",
                r["mount"] or "-",
            ]
        )
    columns = ["ID", "NAME", "STATUS", "IMAGE", "IPV4", "MEMORY", "CPU", "STORAGE", "NETWORK", "PRIVILEGED"]
    print_table([*columns, "MOUNT"], table)


def show_images(rows: list[dict]) -> None:
    print_table(
        ["NAME", "SIZE", "SOURCE", "CREATED"],
        [[r["name"], format_size(r["size"]), r["source"] or "-", r["created"] or "-"] for r in rows],
    )


def cmd_list(args) -> int:
    store = Store.open()
    data = {}
    if args.what in ("containers", "all"):
        data["containers"] = container_rows(store)
        from .containers import sparse_shortfall

        shortfall = sparse_shortfall(store, [r["id"] for r in data["containers"] if r["storage_sparse"]])
        if shortfall:
            warn(shortfall)
    if args.what in ("images", "all"):
        data["images"] = image_rows(store)
    if args.json:
        out(json.dumps(data if args.what == "all" else data[args.what], indent=2))
        return 0
    if "containers" in data:
        show_containers(data["containers"])
    if "images" in data:
        if "containers" in data:
            out()
        show_images(data["images"])
    hint_go_data(store)
    return 0


def hint_go_data(store: Store) -> None:
    from . import gokiwi

    if gokiwi.pending(store):
        warn(
            "this data folder also holds containers or images of the original Go Kiwi;"
            " run 'kiwi migrate' to adopt them"
        )


def cmd_migrate(args) -> int:
    from . import gokiwi

    lines = gokiwi.migrate(Store.open())
    for line in lines:
        out(line)
    skipped = sum(map(gokiwi.is_skipped, lines))
    if skipped:
        raise KiwiError(
            f"{skipped} of the original Kiwi's images or containers were not adopted"
            f" (see above); fix them and run 'kiwi migrate' again"
        )
    return 0


# --- images -------------------------------------------------------------------


def cmd_import(args) -> int:
    from . import images

    store = Store.open()
    if not os.path.isfile(args.archive):
        raise KiwiError(f"no such file: {args.archive}")
    bar = progress_bar(f"importing {args.name}")
    try:
        meta = images.import_image(
            store, args.name, args.archive, progress=bar, source=os.path.abspath(args.archive)
        )
    finally:
        bar.close()
    out(f"imported image {meta['name']} ({format_size(meta.get('size'))})")
    return 0


def cmd_pull(args) -> int:
    from . import pull

    store = Store.open()
    bar = progress_bar(f"pulling {args.distro}")
    try:
        result = pull.pull(
            store, args.distro, release=args.release, arch=args.arch, variant=args.variant, progress=bar
        )
    finally:
        bar.close()
    out(result.get("message") or f"pulled image {args.distro}")
    return 0


# --- containers ---------------------------------------------------------------


def cmd_create(args) -> int:
    from . import containers

    store = Store.open()
    settings: dict = {}
    containers.apply_settings(settings, args.memory, args.cpu, args.network)
    notes: list[str] = []
    if args.image.endswith(".kiwi") or os.sep in args.image:
        from . import snapshots

        bar = progress_bar("restoring")
        try:
            config = snapshots.create_from_archive(
                store,
                args.image,
                name=args.name,
                storage_text=args.storage,
                overrides=settings,
                notes=notes,
                progress=bar,
                sparse=args.sparse,
                privileged=args.privileged,
            )
        finally:
            bar.close()
    else:
        config = containers.create(
            store,
            args.image,
            name=args.name,
            storage_text=args.storage,
            settings=settings,
            sparse=args.sparse,
            privileged=args.privileged,
        )
    for note in notes:
        warn(note)
    out(config["id"])
    return 0


def cmd_set(args) -> int:
    from . import containers, runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    given = (args.memory, args.cpu, args.storage, args.network, args.shell, args.sparse, args.privileged)
    if all(v is None for v in given):
        raise KiwiError(
            "nothing to set; give --memory, --cpu, --storage, --sparse, --reserve, --network, --shell "
            "or --privileged"
        )
    from . import storage_ops

    with store.container_lock(cid):
        config = store.container_config(cid)
        notes = []
        if args.storage is None and storage_ops.finish_interrupted_change(store, config):
            notes.append(
                f"finished an interrupted storage change: storage is {storage_ops.describe(config['storage'])}"
            )
        changed = containers.apply_settings(config, args.memory, args.cpu, args.network, args.shell)
        if args.sparse is not None:
            notes += storage_ops.change_reservation(store, config, args.sparse)
        if args.storage is not None:
            notes += runtime.change_storage(store, config, containers.parse_storage(args.storage))
        if args.privileged is not None:
            notes += change_privileged(store, config, args.privileged == "yes")
        containers.save_config(store, config)
        notes += runtime.apply_live(store, config, changed)
    for note in notes:
        out(note)
    return 0


def change_privileged(store: Store, config: dict, privileged: bool) -> list[str]:
    from . import containers, idmap, runtime

    if privileged == idmap.is_privileged(config):
        return []
    if runtime.status(store, config["id"])["status"] in ("running", "stale"):
        raise KiwiError(f"container {config['id']} is running; stop it first: kiwi stop {config['id']}")
    if not privileged:
        containers.check_unprivileged_support(store, config["image"], store.container_dir(config["id"]))
    containers.set_privileged(store, config, privileged)
    if privileged:
        return ["root inside is now root of the host"]
    return ["root inside is now an unprivileged host user"]


def cmd_delete(args) -> int:
    from . import containers, runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    config = store.container_config(cid)
    label = f"{cid}" + (f" ({config['name']})" if config.get("name") else "")
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise KiwiError(f"refusing to delete {label} without a terminal to ask on; add --yes")
        answer = input(f"Delete container {label} and all its data? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out("not deleted")
            return 1
    with store.container_lock(cid):
        state = runtime.status(store, cid)
        if state["status"] == "running":
            raise KiwiError(f"container {label} is running; stop it first: kiwi stop {cid}")
        if state.get("mount_target"):
            raise KiwiError(
                f"container {label} is mounted at {state['mount_target']}; run: kiwi unmount {cid}"
            )
        runtime.forget(store, cid)
        containers.delete(store, cid)
    out(f"deleted {label}")
    return 0


def cmd_ip(args) -> int:
    store = Store.open()
    cid = store.resolve_container(args.container)
    config = store.container_config(cid)
    if config.get("network") == "host":
        raise KiwiError(
            f"container {cid} shares the host's network (--network host); "
            "it has no address of its own: use the host's addresses"
        )
    if not config.get("ipv4"):
        raise KiwiError(f"container {cid} has no IPv4 address")
    out(config["ipv4"])
    return 0


# --- runtime ------------------------------------------------------------------


def cmd_attach(args) -> int:
    store = Store.open()
    if args.old:
        if args.container or args.cmd:
            raise KiwiError("--old takes only a session id: kiwi attach --old <session>")
        from . import sessions

        return sessions.reattach(store, args.old, detach_key=args.detach_key, takeover=args.takeover)
    if not args.container:
        raise KiwiError("which container? kiwi attach <container> [-- command]")
    if args.cmd and not args.cmd[0]:
        # Refused before anything starts; 127 as sh and env give for a command they cannot find.
        from .errors import CommandNotFound

        raise CommandNotFound("the command to run is empty; give one after --, e.g. kiwi attach c -- sh")
    from . import runtime

    cid = store.resolve_container(args.container)
    record = runtime.ensure_running(store, cid)
    if record.get("warning"):
        warn(record["warning"])
    if args.direct or args.cmd:
        if args.session:
            raise KiwiError("--session opens a shell; run a command with: kiwi attach <c> -- cmd")
        return runtime.run_attached(store, cid, args.cmd or None)
    from . import sessions

    return sessions.new_session(store, cid, detach_key=args.detach_key)


def cmd_sessions(args) -> int:
    from . import sessions

    store = Store.open()
    cid = store.resolve_container(args.container)
    if args.kill:
        sessions.kill(store, cid, args.kill)
        out(f"killed session {args.kill}")
        return 0
    if args.delete:
        sessions.delete(store, cid, args.delete)
        out(f"deleted session {args.delete}")
        return 0
    rows = sessions.list_sessions(store, cid)
    if args.json:
        out(json.dumps(rows, indent=2))
    else:
        print_table(
            ["SESSION", "STATE", "CREATED", "COMMAND"],
            [[r["id"], r["state"], r["created"], r["command"]] for r in rows],
        )
    return 0


def cmd_stop(args) -> int:
    from . import runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    if args.time < 0:
        raise KiwiError("--time must be 0 or more seconds")
    was_running = runtime.stop(store, cid, grace=args.time)
    out(f"stopped {cid}" if was_running else f"{cid} is not running")
    return 0


def cmd_cleanup(args) -> int:
    from . import runtime

    store = Store.open()
    removed = runtime.cleanup(store)
    for line in removed:
        out(f"removed {line}")
    if not removed:
        out("nothing to clean up")
    return 0


def cmd_mount(args) -> int:
    from . import runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    target = runtime.mount(store, cid, args.target)
    out(f"mounted {cid} at {target}")
    return 0


def cmd_unmount(args) -> int:
    from . import runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    target = runtime.unmount(store, cid)
    out(f"unmounted {cid} from {target}")
    return 0


# --- archives -----------------------------------------------------------------


def cmd_snap(args) -> int:
    from . import snapshots

    store = Store.open()
    cid = store.resolve_container(args.container)
    bar = progress_bar(f"snap {args.snapshot}")
    try:
        path = snapshots.snap(store, cid, args.snapshot, progress=bar)
    finally:
        bar.close()
    out(str(path))
    return 0


def cmd_commit(args) -> int:
    from . import snapshots

    store = Store.open()
    cid = store.resolve_container(args.container)
    bar = progress_bar(f"commit {args.image}")
    try:
        meta = snapshots.commit(store, cid, args.image, progress=bar)
    finally:
        bar.close()
    out(f"created image {meta['name']}")
    return 0


# --- console and help ---------------------------------------------------------


def cmd_terminal(args) -> int:
    from . import terminal

    return terminal.run_console()


def cmd_help(args) -> int:
    from .cli import build_parser

    parser = build_parser()
    if not args.topic:
        parser.print_help()
        return 0
    sub = subparsers(parser).get(args.topic)
    if sub is None:
        raise KiwiError(f"no command {args.topic!r}; see 'kiwi --help'")
    sub.print_help()
    return 0


def subparsers(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
