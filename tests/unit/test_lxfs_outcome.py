"""runtime.Starter.limits_outcome: what a start records of its limits server, from the
server's own outcome and stage 2's "lxfs" reports (the first: whether it sent the
connection; a later one: the files could not be bound)."""

from __future__ import annotations

from kiwi import lxfs
from kiwi.runtime import Starter

HANDLER = [4242, 99]


class Finished:
    def __init__(self, *outcome):
        self.outcome = outcome

    def finish(self):
        return self.outcome


def recorded(server, said):
    starter = Starter.__new__(Starter)
    starter.limits_outcome(server, [("pid", 7), *[("lxfs", value) for value in said], ("ready", None)])
    return starter.lxfs, starter.sysinfo, starter.sysinfo_handler


def test_all_active():
    server = Finished(lxfs.ACTIVE, lxfs.ACTIVE, HANDLER)
    assert recorded(server, [lxfs.ACTIVE]) == (lxfs.ACTIVE, lxfs.ACTIVE, HANDLER)


def test_a_server_that_never_started_is_the_cause():
    reason = "its server did not start (no such file)"
    said = [f"{lxfs.NOT_TAKEN} (Broken pipe)"]
    assert recorded(reason, said) == (reason, None, None)


def test_no_fuse_here_is_told_by_stage_2():
    server = Finished("its server failed: kiwi-lxfs: no FUSE connection", "x", None)
    said = ["no FUSE on this host (/dev/fuse: No such file or directory)"]
    assert recorded(server, said) == (said[0], None, None)


def test_a_server_that_ended_before_it_took_the_connection_tells_why():
    failed = "its server failed: kiwi-lxfs: cannot open the host's /proc: Permission denied"
    server = Finished(failed, failed, None)
    assert recorded(server, [f"{lxfs.NOT_TAKEN} (Broken pipe)"]) == (failed, None, None)


def test_files_that_could_not_be_bound_are_told_by_stage_2():
    server = Finished(lxfs.ACTIVE, lxfs.ACTIVE, HANDLER)
    said = [lxfs.ACTIVE, "its server did not answer (Transport endpoint is not connected)"]
    assert recorded(server, said) == (said[1], lxfs.ACTIVE, HANDLER)


def test_the_servers_failure_comes_first():
    failed = "its server failed: exit status 9"
    assert recorded(Finished(failed, failed, None), [lxfs.ACTIVE]) == (failed, failed, None)


def test_no_report_at_all():
    lxfs_, sysinfo, handler = recorded(Finished(lxfs.ACTIVE, lxfs.ACTIVE, None), [])
    assert (lxfs_, sysinfo, handler) == ("the container's init sent no FUSE connection", None, None)
