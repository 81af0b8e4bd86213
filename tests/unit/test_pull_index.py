"""kiwi.pull: reading the image server's index and choosing a build from it."""

import pytest

from kiwi import pull
from kiwi.errors import KiwiError

SERVER = "http://127.0.0.1:9"


def build(distro, release, arch="amd64", variant="default", date="20250101_00:00"):
    return {
        "distro": distro,
        "release": release,
        "arch": arch,
        "variant": variant,
        "build": date,
        "path": f"/images/{distro}/{release}/{arch}/{variant}/{date}/",
    }


BUILDS = [
    build("debian", "bookworm", date="20250101_05:24"),
    build("debian", "bookworm", date="20250103_05:24"),
    build("debian", "bookworm", date="20250102_05:24"),
    build("debian", "bullseye"),
    build("debian", "sid", date="20250109_05:24"),
    build("debian", "bookworm", arch="arm64"),
    build("debian", "bookworm", variant="cloud", date="20250105_05:24"),
    build("alpine", "3.9"),
    build("alpine", "3.10"),
    build("alpine", "edge", date="20250109_00:00"),
    build("archlinux", "current"),
]


def refused(fragment, *args):
    with pytest.raises(KiwiError, match=fragment) as err:
        pull.choose_build(BUILDS, *args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_the_newest_build_of_the_release():
    chosen = pull.choose_build(BUILDS, "debian", "bookworm", "amd64", "default")
    assert chosen["build"] == "20250103_05:24"


def test_debian_defaults_to_the_newest_stable_not_sid():
    assert pull.choose_build(BUILDS, "debian", None, "amd64", "default")["release"] == "bookworm"
    assert pull.choose_build(BUILDS, "debian", "", "amd64", "default")["release"] == "bookworm"


def test_numbered_releases_compare_as_numbers():
    assert pull.choose_build(BUILDS, "alpine", None, "amd64", "default")["release"] == "3.10"


def test_no_numbered_release_asks_for_one():
    message = refused(
        "choose a archlinux release with --release: current", "archlinux", None, "amd64", "default"
    )
    assert "current" in message


def test_variant_and_arch_select():
    assert pull.choose_build(BUILDS, "debian", "bookworm", "arm64", "default")["arch"] == "arm64"
    assert pull.choose_build(BUILDS, "debian", "bookworm", "amd64", "cloud")["variant"] == "cloud"


def test_unknown_distro_lists_the_distros():
    message = refused("has no 'fedora'", "fedora", None, "amd64", "default")
    assert message.endswith("alpine, archlinux, debian")


def test_unknown_arch_lists_the_architectures():
    message = refused("no alpine for architecture riscv64;", "alpine", None, "riscv64", "default")
    assert "architectures: amd64 (choose with --arch)" in message
    message = refused(r"no debian for architecture arm64 \(variant cloud\)", "debian", None, "arm64", "cloud")
    assert "architectures: amd64, arm64" in message


def test_unknown_release_lists_the_releases():
    message = refused("no debian release 'buster' for amd64", "debian", "buster", "amd64", "default")
    assert "releases: bookworm, bullseye, sid (choose with --release)" in message


def test_parse_index_keeps_only_complete_lines():
    text = (
        "debian;bookworm;amd64;default;20250101_05:24;/images/debian/bookworm/amd64/default/x/\n"
        "\n"
        "# comment\n"
        "debian;bookworm;amd64;default;20250101_05:24\n"  # five fields
        "debian;bookworm;amd64;;20250101_05:24;/path/\n"  # an empty field
        "a;b;c;d;e;f;g\n"  # seven
        "  alpine;3.20;arm64;default;20250101_13:00;/images/a/  \r\n"
    )
    builds = pull.parse_index(text, SERVER)
    assert [(b["distro"], b["release"], b["arch"]) for b in builds] == [
        ("debian", "bookworm", "amd64"),
        ("alpine", "3.20", "arm64"),
    ]
    assert builds[1]["path"] == "/images/a/"


@pytest.mark.parametrize("text", ["", "\n\n", "<html>not an index</html>"])
def test_an_index_without_builds_is_an_error(text):
    with pytest.raises(KiwiError, match=f"{SERVER}/.* lists no images; check KIWI_IMAGE_SERVER"):
        pull.parse_index(text, SERVER)


def test_an_index_round_trip_chooses_like_the_list():
    text = "\n".join(
        ";".join(b[k] for k in ("distro", "release", "arch", "variant", "build", "path")) for b in BUILDS
    )
    assert pull.choose_build(
        pull.parse_index(text, SERVER), "debian", None, "amd64", "default"
    ) == pull.choose_build(BUILDS, "debian", None, "amd64", "default")
