"""One function per command. They parse nothing (cli.py did), call the layers,
and print. Layer modules are imported here, inside the commands, to keep
start-up fast."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys

from . import listing
from .errors import EXIT_ERROR, KiwiError, printable
from .sizes import format_size
from .store import Store


def out(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(f"kiwi: {printable(text)}", file=sys.stderr, flush=True)


Store.lock_wait_notice = warn  # a command kept waiting by another kiwi says so


def progress_bar(label: str):
    from .progress import Progress

    return Progress(label)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    # One write, not one flush a row (a list of 100 containers made 100 system calls).
    out(listing.table_text(headers, rows))


# --- list ---------------------------------------------------------------------


def container_rows(store: Store) -> list[dict]:
    from .containers import storage_summary

    started = store.started_ids()
    rows = []
    for cid in store.container_ids():
        try:
            config = store.container_config(cid)
        except KiwiError:
            continue
        if config.get("id") != cid:
            continue  # damaged too: its storage figures would be another folder's
        state = container_status(store, cid, started)
        used, _limit = storage_summary(store, config, state.get("init_pid"))
        rows.append(listing.container_row(cid, config, state, used))
    return rows


def container_status(store: Store, cid: str, started: set[str] | None) -> dict:
    """Only a started container has a runtime folder (its record, mount and lease live
    there): without one it is stopped, and costs no further look."""
    if started is not None and cid not in started:
        return {"status": "stopped", "mount_target": None}
    from . import runtime

    return runtime.status(store, cid)


def image_rows(store: Store) -> list[dict]:
    from . import images

    return [
        {
            "name": i.get("name"),
            "size": i.get("size"),
            "source": i.get("source"),
            "created": i.get("created"),
            "config": i.get("config") or {},
        }
        for i in images.list_images(store)
    ]


def show_containers(rows: list[dict]) -> None:
    out(listing.containers_table(rows))


def show_images(rows: list[dict]) -> None:
    print_table(
        ["NAME", "SIZE", "SOURCE", "CREATED"],
        [[r["name"], format_size(r["size"]), r["source"] or "-", r["created"] or "-"] for r in rows],
    )


def show_exports(rows: list[dict]) -> None:
    print_table(
        ["FILE", "SIZE", "MODIFIED", "PATH"],
        [[r["name"], format_size(r["size"]), r["modified"], r["path"]] for r in rows],
    )


def refuse_partial_view(store: Store) -> None:
    """Without root, a running container's record (0600) cannot be read: it would show
    as stopped, with other storage figures. Say so instead of showing wrong data."""
    if os.geteuid() == 0:
        return
    from .runtime import runtime_file

    for cid in store.container_ids():
        runtime_json = runtime_file(store, cid)
        try:
            os.stat(runtime_json)
        except FileNotFoundError:
            continue
        except OSError:
            pass
        if not os.access(runtime_json, os.R_OK):
            raise KiwiError(
                "the state of Kiwi's running containers is readable by root only; run: sudo kiwi list"
            )


def cmd_list(args) -> int:
    store = Store.open()
    data = {}
    if args.what in ("containers", "all"):
        refuse_partial_view(store)
        data["containers"] = container_rows(store)
        sparse_ids = [r["id"] for r in data["containers"] if r["storage_sparse"]]
        shortfall = listing.sparse_shortfall(str(store.root), sparse_ids)
        if shortfall:
            warn(shortfall)
    if args.what in ("images", "all"):
        try:
            data["images"] = image_rows(store)
        except PermissionError:
            raise KiwiError("Kiwi's images are readable by root only; run: sudo kiwi list images") from None
    if args.what in ("exports", "all"):
        from . import images

        data["exports"] = images.list_exports(store)
    if args.json:
        out(json.dumps(data if args.what == "all" else data[args.what], indent=2))
        return 0
    if "containers" in data:
        show_containers(data["containers"])
    if "images" in data:
        if "containers" in data:
            out()
        show_images(data["images"])
    if "exports" in data:
        if len(data) > 1:
            out()
        show_exports(data["exports"])
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
    if os.path.isdir(args.archive) or os.path.isfile(args.archive):
        from .oci.pull import import_image_archive

        meta = import_image_archive(store, args.name, args.archive, progress_for=progress_bar)
        if meta is not None:
            out(f"imported image {meta['name']} ({format_size(meta.get('size'))}) from an OCI image")
            return 0
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
    from .oci.reference import looks_like_reference

    store = Store.open()
    if looks_like_reference(args.distro):
        return pull_oci(store, args)
    if args.name or args.user or args.insecure:
        raise KiwiError("--name, --user and --insecure go with an OCI reference (e.g. alpine:3.20)")
    bar = progress_bar(f"pulling {args.distro}")
    try:
        pull.pull(
            store, args.distro, release=args.release, arch=args.arch, variant=args.variant, progress=bar
        )
    finally:
        bar.close()
    out(f"pulled image {args.distro}")
    return 0


def pull_oci(store: Store, args) -> int:
    from .oci.pull import pull

    if args.release or args.variant != "default":
        raise KiwiError("--release and --variant go with a distribution name; an OCI reference has a tag")
    result = pull(
        store,
        args.distro,
        name=args.name,
        arch=args.arch,
        insecure=args.insecure,
        credentials=registry_credentials(args.user),
        progress_for=progress_bar,
    )
    done = "pulled" if result["downloaded"] else "already up to date:"
    out(f"{done} image {result['image']} ({result['digest']})")
    return 0


def registry_credentials(user: str | None):
    """--user NAME[:PASSWORD]; without a password, ask on the terminal."""
    if not user:
        return None
    name, colon, password = user.partition(":")
    if not colon:
        if not sys.stdin.isatty():
            raise KiwiError("--user NAME needs a terminal to ask the password on; give --user NAME:PASSWORD")
        import getpass

        password = getpass.getpass(f"password for {name}: ")
    return name, password


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
    from . import containers, runstate, runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    given = (
        args.memory,
        args.cpu,
        args.storage,
        args.network,
        args.shell,
        args.sparse,
        args.autostart,
        args.privileged,
    )
    if all(v is None for v in given):
        raise KiwiError(
            "nothing to set; give --memory, --cpu, --storage, --sparse, --reserve, --network, --shell,"
            " --autostart or --privileged"
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
        if args.autostart is not None:
            config["autostart"] = args.autostart == "yes"
        if args.shell is not None:
            containers.check_shell_exists(store, config, config["shell"])
        if args.sparse is not None:
            notes += storage_ops.change_reservation(store, config, args.sparse)
        if args.storage is not None:
            running = runstate.read_runtime(store, cid) is not None
            notes += storage_ops.change_storage(
                store, config, containers.parse_storage(args.storage), running
            )
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
    if args.name is not None:
        return delete_image_or_export(args.container, args.name)
    from . import containers, runtime

    store = Store.open()
    cid = resolve_container_to_delete(store, args.container)
    config = store.container_config(cid)
    label = f"{cid}" + (f" ({config['name']})" if config.get("name") else "")
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise KiwiError(f"refusing to delete {label} without a terminal to ask on; add --yes")
        answer = input(f"Delete container {label} and all its data? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out("not deleted")
            return EXIT_ERROR
    if args.force:
        stop_and_unmount(store, cid)
    with store.container_lock(cid):
        state = runtime.status(store, cid)
        if state["status"] == "running":
            raise KiwiError(f"container {label} is running; stop it first: kiwi stop {cid}")
        if state.get("mount_target"):
            raise KiwiError(
                f"container {label} is mounted at {state['mount_target']}; run: kiwi unmount {cid}"
            )
        left = runtime.forget(store, cid)
        containers.delete(store, cid)
    out(f"deleted {label}")
    for line in left:
        warn(f"{line}; run 'kiwi cleanup'")
    return 0


def resolve_container_to_delete(store: Store, ref: str) -> str:
    """The container `kiwi delete REF` means; when REF names no container but an image,
    the error gives the command that deletes the image instead."""
    try:
        return store.resolve_container(ref)
    except KiwiError:
        if ref and "/" not in ref and not ref.startswith(".") and (store.images_dir / ref).is_dir():
            raise KiwiError(
                f"no container named {ref!r}; to delete the image: kiwi delete image {ref}"
            ) from None
        raise


def stop_and_unmount(store: Store, cid: str) -> None:
    """delete --force: what would refuse the delete, undone first."""
    from . import hostmount, runstate, runtime, sessions

    if runtime.stop(store, cid, sessions.stop_all):
        out(f"stopped {cid}")
    if runstate.read_mount(store, cid):
        out(f"unmounted {cid} from {hostmount.unmount(store, cid)}")


def delete_image_or_export(kind: str, name: str) -> int:
    from . import images

    store = Store.open()
    if kind == "image":
        images.remove_image(store, name)
        out(f"deleted image {name}")
    elif kind == "export":
        out(f"deleted {images.delete_export(store, name)}")
    else:
        raise KiwiError(
            "'kiwi delete' takes one container, or: kiwi delete image <name> / kiwi delete export <file>"
        )
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
    """Without the cyclic garbage collector until the command runs (cli.quick_attach turned it
    off): a cold attach's start allocates much and frees little, and the stages it forks
    would copy every page a collection touches (issue 20). On again before any relay."""
    import gc

    try:
        return run_attach(args)
    finally:
        gc.enable()


def run_attach(args) -> int:
    import gc

    store = Store.open()
    if args.old:
        if args.container or args.cmd or args.env or args.workdir or args.user:
            raise KiwiError("--old takes only a session id: kiwi attach --old <session>")
        gc.enable()  # the session may last hours
        from . import sessions

        session = sessions.reattach(store, args.old, detach_key=args.detach_key, takeover=args.takeover)
        return attach_session(session, "reattached to session")
    if not args.container:
        raise KiwiError("which container? kiwi attach <container> [-- command]")
    if args.cmd and not args.cmd[0]:
        # Refused before anything starts; 127 as sh and env give for a command they cannot find.
        from .errors import CommandNotFound

        raise CommandNotFound("the command to run is empty; give one after --, e.g. kiwi attach c -- sh")
    from . import execopts, runtime

    options = execopts.from_args(args)
    cid = store.resolve_container(args.container)
    if getattr(args, "dashdash", False) and not args.cmd:
        args.cmd = image_default_command(store, cid)
    if not args.cmd:
        refuse_shell_without_input(cid)
    record = runtime.ensure_running(store, cid)
    if record.get("warning"):
        warn(record["warning"])
    if args.direct or (args.cmd and not args.session):
        return runtime.run_attached(store, cid, args.cmd or None, exec_options=options, record=record)
    gc.enable()  # a session may last hours
    from . import sessions

    session = sessions.new_session(
        store, cid, detach_key=args.detach_key, argv=args.cmd or None, exec_options=options
    )
    return attach_session(session, "session")


def attach_session(session, what: str) -> int:
    """Greet the session, announce it, relay this terminal; then say how it ended."""
    with session:
        warn(f"{what} {session.sid} (detach with {session.key_name})")
        outcome = session.relay()
    return session_ended(outcome, session.sid)


def session_ended(outcome, sid: str) -> int:
    """After the terminal is restored: say what happened, return the exit status."""
    if outcome.how == "lost":
        raise KiwiError(f"lost the connection to session {sid}: its daemon ended")
    if outcome.how == "detached":
        tell(f"kiwi: detached from session {sid}; reattach with: kiwi attach --old {sid}")
    elif outcome.how == "taken-over":
        tell(f"kiwi: {outcome.reason if outcome.reason is not None else f'detached from session {sid}'}")
    elif outcome.how == "signal":
        tell(
            f"kiwi: detached from session {sid} (signal {outcome.signum}); reattach with: kiwi attach --old {sid}"
        )
    return outcome.status


def tell(line: str) -> None:
    """A message on the session's terminal (it may have been left mid-line), on a line of its own."""
    with contextlib.suppress(OSError):
        sys.stderr.write("\r\n" + line + "\n")
        sys.stderr.flush()


def refuse_shell_without_input(cid: str) -> None:
    """A shell needs a terminal, or a script piped in; /dev/null, a socket or a closed
    stdin (cron, systemd, ssh -T) would only get the shell's prompts back."""
    import stat

    try:
        mode = os.fstat(0).st_mode
    except OSError:
        mode = 0
    if os.isatty(0) or stat.S_ISFIFO(mode) or stat.S_ISREG(mode):
        return
    raise KiwiError(
        f"a shell needs a terminal or a script on standard input; run a command instead: kiwi attach {cid} -- cmd"
    )


def image_default_command(store: Store, cid: str) -> list[str]:
    """`kiwi attach c --` with nothing after it: the image's Entrypoint + Cmd."""
    from .oci.config import default_command

    return default_command(store, store.container_config(cid))


def cmd_sessions(args) -> int:
    from . import sessions

    store = Store.open()
    cid = store.resolve_container(args.container)
    if args.kill:
        sid = session_of(store, cid, args.kill)
        sessions.kill(store, cid, sid)
        out(f"killed session {sid}")
        return 0
    if args.delete:
        from .sessions import log as sessionlog

        # A session of a stopped container is gone, its log is not: --delete takes either.
        logged = sessionlog.session_logs(store, cid)
        sid = session_of(store, cid, args.delete, also=logged)
        if sid in sessions.session_ids(store, cid):
            sessions.delete(store, cid, sid)
        sessionlog.remove(store, cid, sid)
        out(f"deleted session {sid}")
        return 0
    rows = sessions.list_sessions(store, cid)
    if args.json:
        out(json.dumps(rows, indent=2))
    else:
        print_table(
            ["SESSION", "STATE", "CREATED", "COMMAND"],
            # The command line is the container's (its shell's argv, a script's #! line).
            [[r["id"], r["state"], r["created"], printable(r["command"])] for r in rows],
        )
    return 0


def session_of(store: Store, cid: str, ref: str, also: tuple[str, ...] | list[str] = ()) -> str:
    """A session id or a unique prefix of one, within the container (like container ids);
    `also`: more session ids to match (those with only a log left)."""
    from . import sessions

    if not sessions.SID_PREFIX_RE.match(ref or ""):
        raise KiwiError(f"invalid session id {ref!r}: sessions have 8 hex digits; see kiwi sessions {cid}")
    known = sorted(set(sessions.session_ids(store, cid)) | set(also))
    matches = [sid for sid in known if sid.startswith(ref)]
    if len(matches) > 1:
        raise KiwiError(f"{ref!r} matches {len(matches)} sessions of container {cid}; give more of its id")
    if not matches:
        raise KiwiError(f"no session {ref} in container {cid}; see kiwi sessions {cid}")
    return matches[0]


def start_container(store: Store, cid: str) -> None:
    from . import runtime

    record = runtime.start(store, cid)
    if record.get("warning"):
        warn(record["warning"])


def cmd_start(args) -> int:
    from . import runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    if runtime.read_runtime(store, cid):
        out(f"{cid} is already running")
        return 0
    start_container(store, cid)
    out(f"started {cid}")
    return 0


def cmd_restart(args) -> int:
    from . import runtime, sessions

    store = Store.open()
    cid = store.resolve_container(args.container)
    if args.time < 0:
        raise KiwiError("--time must be 0 or more seconds")
    runtime.stop(store, cid, sessions.stop_all, grace=args.time)
    start_container(store, cid)
    out(f"restarted {cid}")
    return 0


def cmd_rename(args) -> int:
    from . import containers, runtime

    store = Store.open()
    cid = store.resolve_container(args.container)
    containers.rename(store, cid, args.new_name)
    out(f"renamed {cid} to {args.new_name}")
    if runtime.read_runtime(store, cid):
        out("its hostname inside changes at the next start")
    return 0


def cmd_autostart(args) -> int:
    from . import autostart

    store = Store.open()
    if args.install:
        path = autostart.install_unit(store, args.systemd_dir)
        enable = f"systemctl daemon-reload && systemctl enable {autostart.UNIT_NAME}"
        out(f"wrote {path}; enable it with: {enable}")
        return 0
    if args.systemd_dir:
        raise KiwiError("--systemd-dir goes with --install")
    failed = 0
    for cid, error in autostart.start_marked(store):
        if error:
            failed += 1
            warn(f"{cid}: {error}")
        else:
            out(f"running {cid}")
    if failed:
        raise KiwiError(f"{failed} container(s) marked autostart did not start (see above)")
    return 0


def cmd_stop(args) -> int:
    from . import runtime, sessions

    store = Store.open()
    cid = store.resolve_container(args.container)
    if args.time < 0:
        raise KiwiError("--time must be 0 or more seconds")
    was_running = runtime.stop(store, cid, sessions.stop_all, grace=args.time)
    out(f"stopped {cid}" if was_running else f"{cid} is not running")
    return 0


def cmd_cleanup(args) -> int:
    from . import cleanup

    store = Store.open()
    failures: list[str] = []
    removed = cleanup.run(store, failures)
    for line in removed:
        out(f"removed {line}")
    if failures:
        raise KiwiError(f"cleanup could not finish: {'; '.join(failures)}")
    if not removed:
        out("nothing to clean up")
    return 0


def cmd_mount(args) -> int:
    from . import hostmount

    store = Store.open()
    cid = store.resolve_container(args.container)
    target = hostmount.mount(store, cid, args.target)
    out(f"mounted {cid} at {target}")
    return 0


def cmd_unmount(args) -> int:
    from . import hostmount

    store = Store.open()
    cid = store.resolve_container(args.container)
    target = hostmount.unmount(store, cid)
    out(f"unmounted {cid} from {target}")
    return 0


def cmd_cp(args) -> int:
    from . import copyfiles

    store = Store.open()
    entries, size, _, streamed = copyfiles.copy(store, args.source, args.dest, archive=args.archive)
    summary = f"copied {entries} file(s), {format_size(size)}, to {args.dest}"
    if streamed:  # into a FIFO or /dev/stdout: the summary must not join the data
        print(summary, file=sys.stderr, flush=True)
    else:
        out(summary)
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


def cmd_export(args) -> int:
    from .oci.export import export_archive

    built = export_archive(Store.open(), args.what, args.file, tag=args.tag, progress_for=progress_bar)
    out(f"wrote {args.file} ({len(built.layers)} layers, {built.manifest_digest})")
    return 0


def cmd_push(args) -> int:
    from .oci.export import push

    result = push(
        Store.open(),
        args.what,
        args.reference,
        insecure=args.insecure,
        credentials=registry_credentials(args.user),
        progress_for=progress_bar,
    )
    layers = ", ".join(f"{n} {how}" for how, n in sorted(result["layers"].items()))
    out(f"pushed {result['reference']} ({result['digest']}; layers: {layers})")
    return 0


def cmd_help(args) -> int:
    from .argtools import subcommands

    parser = args.parser
    if not args.topic:
        parser.print_help()
        return 0
    from .argtools import HIDDEN_ALIASES, did_you_mean

    commands = subcommands(parser)
    sub = commands.get(HIDDEN_ALIASES.get(args.topic, args.topic).split()[0])
    if sub is None:
        raise KiwiError(did_you_mean(args.topic, list(commands)))
    sub.print_help()
    return 0


# --- logs ---------------------------------------------------------------------


def cmd_logs(args) -> int:
    from .sessions import log as sessionlog

    store = Store.open()
    if args.tail is not None and args.tail < 0:
        raise KiwiError("--tail takes a number of lines, 0 or more")
    cid, sids = logs_target(store, args.target)
    if args.all and len(sids) > 1 and args.follow:
        raise KiwiError("--follow follows one session; leave out --all")
    if not args.all:
        sids = sids[-1:]
    for sid in sids:
        if args.all:
            out(f"==> session {sid} <==")
        write_log(sessionlog.tail(sessionlog.read(store, cid, sid), args.tail))
    if args.follow and sids:
        sid = sids[-1]
        offset = len(sessionlog.read_file(sessionlog.log_path(store, cid, sid)))
        sessionlog.follow(store, cid, sid, offset, lambda: session_running(store, cid, sid), write_log)
    return 0


def logs_target(store: Store, ref: str) -> tuple[str, list[str]]:
    """(container, its session ids with a log, oldest first) for a container or one session."""
    from .sessions import log as sessionlog

    try:
        cid = store.resolve_container(ref)
    except KiwiError:
        cid = None
    if cid is None:
        if not re.fullmatch(r"[0-9a-f]{1,8}", ref):
            raise KiwiError(f"no container or session {ref!r}; see kiwi list and kiwi sessions <container>")
        cid, sid = sessionlog.find(store, ref)
        return cid, [sid]
    sids = sessionlog.session_logs(store, cid)
    if not sids:
        raise KiwiError(f"container {cid} has no session logs; sessions start with: kiwi attach {cid}")
    return cid, sids


def session_running(store: Store, cid: str, sid: str) -> bool:
    from . import sessions

    record = sessions.read_record(sessions.record_path(store, cid, sid))
    return record is not None and record.get("state") != "exited" and sessions.daemon_alive(record)


def write_log(data: bytes) -> None:
    """Raw output, minus the queries that would make this terminal type answers into its shell."""
    from .sessions import TERMINAL_QUERIES

    sys.stdout.buffer.write(TERMINAL_QUERIES.sub(b"", data))
    sys.stdout.buffer.flush()


# --- inspect and stats --------------------------------------------------------


def cmd_inspect(args) -> int:
    from . import usage

    store = Store.open()
    out(json.dumps(usage.inspect(store, store.resolve_container(args.container)), indent=2))
    return 0


def cmd_stats(args) -> int:
    from . import runtime, usage

    store = Store.open()
    ids = [store.resolve_container(args.container)] if args.container else store.container_ids()
    rows = []
    for cid in ids:
        state = runtime.status(store, cid)
        if state["status"] == "running" or args.container:
            rows.append(usage.usage(store, cid, state))
    if args.json:
        out(json.dumps(rows, indent=2))
        return 0
    print_table(
        ["ID", "NAME", "STATUS", "MEMORY", "CPU TIME", "PIDS", "STORAGE"], [stats_row(r) for r in rows]
    )
    return 0


def stats_row(r: dict) -> list[str]:
    def used_of(used, limit) -> str:
        text = "-" if used is None else format_size(used)
        return f"{text}/{'host' if limit is None else format_size(limit)}"

    return [
        r["id"],
        r["name"] or "-",
        r["status"],
        used_of(r["memory_used"], r["memory_limit"]),
        "-" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.2f}s",
        "-" if r["pids"] is None else str(r["pids"]),
        used_of(r["storage_used"], r["storage_limit"]),
    ]


def cmd_completion(args) -> int:
    from .completion import script

    sys.stdout.write(script(args.shell))
    return 0
