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
