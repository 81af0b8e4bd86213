#!/bin/sh
# Runs INSIDE the test VM, started by tests/vm/test_vm_smoke.py through
# scripts/vm-test. Prints one line per check: "CHECK <name> ok" or
# "CHECK <name> FAIL <output>", then exits 42 so the caller can see that the
# command's exit status comes back out of the VM.

check() {   # check NAME FUNCTION
    if output=$("$2" 2>&1); then
        echo "CHECK $1 ok"
    else
        echo "CHECK $1 FAIL $(echo "$output" | tr '\n' '|')"
    fi
}

scratch_tmpfs() {   # a fresh tmpfs, as kiwi uses for overlay upper dirs
    dir=$(mktemp -d) && mount -t tmpfs tmpfs "$dir" && echo "$dir"
}

cgroup2_controllers() {
    [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || return 1
    for controller in memory cpu cpuset pids; do
        grep -qw "$controller" /sys/fs/cgroup/cgroup.subtree_control || return 1
    done
    ! grep -q " cgroup " /proc/mounts || return 1   # no v1 hierarchy anywhere
    mkdir /sys/fs/cgroup/vm-smoke && echo 64M >/sys/fs/cgroup/vm-smoke/memory.max &&
        echo "50000 100000" >/sys/fs/cgroup/vm-smoke/cpu.max &&
        rmdir /sys/fs/cgroup/vm-smoke
}

loop_ext4() {
    dir=$(scratch_tmpfs) && truncate -s 64M "$dir/disk.img" &&
        mkfs.ext4 -q -F "$dir/disk.img" &&
        device=$(losetup --find --show "$dir/disk.img") &&
        mkdir "$dir/mnt" && mount -t ext4 "$device" "$dir/mnt" &&
        echo data >"$dir/mnt/file" && umount "$dir/mnt" &&
        losetup -d "$device" && umount "$dir"
}

overlay_on_tmpfs() {
    dir=$(scratch_tmpfs) && mkdir "$dir/lower" "$dir/upper" "$dir/work" "$dir/merged" &&
        echo lower >"$dir/lower/file" &&
        mount -t overlay overlay \
            -o "lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged" &&
        echo changed >"$dir/merged/file" && [ "$(cat "$dir/upper/file")" = changed ] &&
        umount "$dir/merged" && umount "$dir"
}

fuse_device() {   # kiwi-lxfs mounts a FUSE connection in each container
    [ -c /dev/fuse ]
}

unshare_all_namespaces() {
    unshare -m -u -i -n -p -f true
}

veth_and_bridge() {
    ip link add vmsmokebr type bridge &&
        ip link add vmsmoke0 type veth peer name vmsmoke1 &&
        ip link set vmsmoke0 master vmsmokebr &&
        ip link set vmsmokebr up && ip link set vmsmoke0 up &&
        ip link del vmsmoke0 && ip link del vmsmokebr
}

# kiwi double-forks; PID 1 must reap orphans or they stay zombies "alive".
orphans_reaped() {
    sh -c 'sleep 0.2 & exit 0' && sleep 1.5 &&
        ! grep -l '^State:.*zombie' /proc/[0-9]*/status
}

environment() {
    [ "$KIWI_VM_SMOKE" = "a b'c" ] && [ "$KIWI_VM_PASSED" = "from caller" ] &&
        [ "$PYTEST_DISABLE_PLUGIN_AUTOLOAD" = 1 ] &&
        [ "$(stat -f -c %T "$HOME")" = tmpfs ] && [ "$(id -u)" = 0 ]
}

checkout_writable() {
    [ -f scripts/vm-test ] && file=$(mktemp -p .) && rm "$file"
}

check cgroup2 cgroup2_controllers
check loop_ext4 loop_ext4
check overlay overlay_on_tmpfs
check fuse fuse_device
check unshare unshare_all_namespaces
check veth_bridge veth_and_bridge
check reaping orphans_reaped
check environment environment
check checkout_writable checkout_writable
exit 42
