"""lxfs.sysinfo_status: the verdict on the sysinfo handler from kiwi-lxfs' stderr on a
good exit (cffi_build/lxfs.c prints one line when the handler could not start)."""

from kiwi import lxfs


def test_no_message_means_the_handler_runs():
    assert lxfs.sysinfo_status("") == lxfs.ACTIVE


def test_the_reason_is_kept_without_the_prefixes():
    line = "kiwi-lxfs: no sysinfo handler: cannot fork: Resource temporarily unavailable"
    assert lxfs.sysinfo_status(line) == (
        "its sysinfo handler did not start (cannot fork: Resource temporarily unavailable)"
    )


def test_a_stopped_or_never_served_container_is_not_probed(tmp_path):
    assert lxfs.sysinfo_now(None, tmp_path) is None
    assert lxfs.sysinfo_now("no /dev/fuse", tmp_path) == "no /dev/fuse"


def test_no_one_on_the_socket_means_it_has_ended(tmp_path):
    assert lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path) == lxfs.HANDLER_GONE


def test_a_listener_means_active_and_a_full_backlog_stuck(tmp_path):
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / lxfs.SOCKET))
    server.listen(1)
    clients = []
    try:
        assert lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path) == lxfs.ACTIVE
        while True:  # nobody accepts: the backlog fills
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            clients.append(client)
            try:
                client.connect(str(tmp_path / lxfs.SOCKET))
            except BlockingIOError:
                break
        assert lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path) == lxfs.HANDLER_STUCK
    finally:
        for client in clients:
            client.close()
        server.close()


def test_the_handler_pid_line_is_not_a_reason():
    message = "kiwi-lxfs: sysinfo handler pid 4242"
    assert lxfs.handler_pid(message) == (4242, "")
    assert lxfs.sysinfo_status(lxfs.handler_pid(message)[1]) == lxfs.ACTIVE
    failed = "kiwi-lxfs: no sysinfo handler: cannot fork: Resource temporarily unavailable"
    assert lxfs.handler_pid(f"{message}\n{failed}") == (4242, failed)
    assert lxfs.handler_pid("kiwi-lxfs: sysinfo handler pid 12x") == (
        None,
        "kiwi-lxfs: sysinfo handler pid 12x",
    )


def child_identity(child) -> list[int]:
    identity = lxfs.handler_identity(child.pid)
    assert identity is not None and identity[0] == child.pid
    return identity


def test_a_live_handler_is_checked_by_its_socket(tmp_path):
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    try:
        identity = child_identity(child)
        assert lxfs.handler_held(identity) is None
        # Alive, but nobody on the socket: the connection tells it is gone.
        assert lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path, identity) == lxfs.HANDLER_GONE
    finally:
        child.kill()
        child.wait()


def test_a_stopped_handler_is_reported_though_its_socket_accepts(tmp_path):
    import signal
    import socket
    import subprocess

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / lxfs.SOCKET))
    server.listen(8)
    child = subprocess.Popen(["sleep", "60"])
    try:
        identity = child_identity(child)
        assert lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path, identity) == lxfs.ACTIVE
        child.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path, identity) == lxfs.HANDLER_STOPPED)
        child.send_signal(signal.SIGCONT)
        assert wait_for(lambda: lxfs.sysinfo_now(lxfs.ACTIVE, tmp_path, identity) == lxfs.ACTIVE)
    finally:
        child.kill()
        child.wait()
        server.close()


def test_an_ended_or_recycled_handler_pid_is_gone(tmp_path):
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    identity = child_identity(child)
    try:
        other_start = [identity[0], identity[1] + 1]  # the pid now names another process
        assert lxfs.handler_held(other_start) == lxfs.HANDLER_GONE
    finally:
        child.kill()
        child.wait()
    assert lxfs.handler_held(identity) == lxfs.HANDLER_GONE


def test_a_record_without_a_handler_is_not_judged_by_it():
    for handler in (None, [], [1], ["1", 2], [1, 2, 3], [True, 5]):
        assert lxfs.handler_held(handler) is None


def wait_for(condition, seconds: float = 5) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
