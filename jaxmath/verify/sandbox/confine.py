"""OS-level confinement of one sandbox child: namespaces, read-only mounts, rlimits, privileges, seccomp.

This is the security boundary of the program-of-thought sandbox. It runs inside the freshly forked
child (never in the host) and uses only the standard library plus libc through ctypes, so that the
fork server can import it as a plain script module. Every layer is applied where the kernel and the
current privileges allow it; `Confinement.layers` records which ones took effect and `Confinement.missing`
why each other one did not.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import platform
import re
import resource
import struct
from typing import Sequence

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_NAMESPACES = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
# statvfs f_flag bit -> mount flag; a bind remount inside a user namespace must keep these.
_KEEP_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
               os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}

# Directories covered by an empty read-only tmpfs in every child (the caller's home directory is added);
# only the paths the interpreter imports from (sys.path) are bind-mounted back inside them, read-only.
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/home", "/root", "/run", "/mnt", "/media", "/srv")
# Every layer a child can get, in the order they are applied.
LAYERS = ("user_namespace", "namespaces", "readonly_fs", "private_proc", "hidden_dirs", "no_capabilities",
          "rlimits", "seccomp")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits for one program run."""

    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    open_files: int = 32
    processes: int = 0  # counts threads too: 0 means the program can start neither.


@dataclasses.dataclass
class Confinement:
    """What was applied to this child: the layers that took effect, and why each other one did not."""

    layers: list[str] = dataclasses.field(default_factory=list)
    missing: dict[str, str] = dataclasses.field(default_factory=dict)
    pid_namespace: bool = False

    def lack(self, layer: str, why: str) -> None:
        self.missing.setdefault(layer, why)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int, what: str) -> str | None:
    """unshare(flags); None on success, else the reason it was refused."""
    if _libc.unshare(ctypes.c_int(flags)) == 0:
        return None
    err = ctypes.get_errno()
    return f"unshare({what}) refused: {errno.errorcode.get(err, err)} ({os.strerror(err)})"


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    ret = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(ret, f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces() -> Confinement:
    """Unshare user, network, mount, IPC and PID namespaces (without the user namespace if refused).

    Must run in a child that has already called setsid(). The caller forks once more afterwards when
    `pid_namespace` is set: that grandchild is PID 1 of the new namespace, so killing it kills all.
    A user namespace also makes RLIMIT_NPROC count only this sandbox's processes, even for root.
    """
    conf = Confinement()
    uid, gid = os.getuid(), os.getgid()
    refused = _unshare(CLONE_NEWUSER | _NAMESPACES, "CLONE_NEWUSER")
    if refused is None:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        conf.layers += ["user_namespace", "namespaces"]
    else:
        conf.lack("user_namespace", refused)
        refused = _unshare(_NAMESPACES, "CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC")
        if refused is not None:
            conf.lack("namespaces", refused)
            for layer in ("readonly_fs", "private_proc", "hidden_dirs"):
                conf.lack(layer, "no mount namespace")
            return conf
        conf.layers.append("namespaces")
    conf.pid_namespace = True
    return conf


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))  # mountinfo escapes spaces as \040
    return points


def set_parent_death_signal() -> None:
    """Have the kernel SIGKILL this process when its parent dies (no orphan outlives the fork server)."""
    _check(_libc.prctl(1, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # PR_SET_PDEATHSIG, SIGKILL


def _remount_readonly(point: str) -> None:
    """Make one mount read-only, keeping the flags a user namespace may not clear (nosuid, nodev, ...)."""
    keep = os.statvfs(point).f_flag
    if not keep & os.ST_RDONLY:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(ms for st, ms in _KEEP_FLAGS.items() if keep & st)
        _mount(None, point, None, flags)


def make_filesystem_readonly(conf: Confinement) -> None:
    """Make every mount private and read-only, and give the PID namespace its own /proc."""
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        for layer in ("readonly_fs", "private_proc", "hidden_dirs"):
            conf.lack(layer, f"cannot make the mounts private: {exc}")
        return
    failed = []
    for point in _mount_points():
        try:
            _remount_readonly(point)
        except OSError as exc:
            failed.append(f"{point} ({exc.strerror})")
    if failed:
        conf.lack("readonly_fs", f"could not remount read-only: {', '.join(failed)}")
    else:
        conf.layers.append("readonly_fs")
    if conf.pid_namespace:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
            conf.layers.append("private_proc")
        except OSError as exc:
            conf.lack("private_proc", str(exc))
    else:
        conf.lack("private_proc", "no PID namespace")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def hiding_plan(hidden: Sequence[str], needed: Sequence[str]) -> dict[str, list[str]]:
    """Which directories to cover and which needed paths to bind back inside each (all resolved, existing).

    A hidden directory inside another is covered with it; a needed path inside another needed path comes
    back with it; needed paths outside every hidden directory need nothing. "/" is never hidden.
    """
    dirs = sorted({os.path.realpath(d) for d in hidden if os.path.isdir(d)} - {"/"})
    dirs = [d for d in dirs if not any(o != d and _within(d, o) for o in dirs)]
    paths = sorted({os.path.realpath(p) for p in needed if os.path.exists(p)})
    paths = [p for p in paths if not any(o != p and _within(p, o) for o in paths)]
    return {d: [p for p in paths if _within(p, d)] for d in dirs}


def _bind_back(path: str, fd: int) -> None:
    """Bind-mount the path `fd` was opened on (now covered) at the same place, read-only."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o444))
    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    _remount_readonly(path)


def _cover(directory: str, keep: Sequence[str]) -> None:
    """Mount an empty tmpfs on `directory`, bind `keep` back into it, then make the tmpfs read-only."""
    fds = [os.open(p, os.O_PATH | os.O_CLOEXEC) for p in keep]  # before the tmpfs hides them
    try:
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=755")
        for path, fd in zip(keep, fds):
            _bind_back(path, fd)
        _mount(None, directory, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    finally:
        for fd in fds:
            os.close(fd)
    expected = {os.path.relpath(p, directory).split("/")[0] for p in keep}
    if set(os.listdir(directory)) != expected or not os.statvfs(directory).f_flag & os.ST_RDONLY:
        raise OSError(f"{directory} still shows {sorted(set(os.listdir(directory)) - expected)}")


def hide_directories(conf: Confinement, hidden: Sequence[str], needed: Sequence[str]) -> None:
    """Cover home and temporary directories, keeping only the `needed` paths (the interpreter's) inside.

    Without a private /proc, /proc is covered too: other processes' /proc/PID/root would reach the
    covered directories. Reported as `hidden_dirs` only when every directory was covered and checked.
    """
    plan = hiding_plan(hidden, needed)
    if "private_proc" not in conf.layers:
        plan["/proc"] = []  # last: bind-backs go through /proc/self/fd
    try:
        for directory, keep in plan.items():
            _cover(directory, keep)
    except OSError as exc:
        conf.lack("hidden_dirs", f"hiding {directory}: {exc}")
        return
    conf.layers.append("hidden_dirs")


def drop_privileges(conf: Confinement) -> None:
    """Drop every capability, the bounding set where allowed, and set no_new_privs, so no exec regains any.

    The uid stays, so modules imported lazily remain readable.
    """
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    for cap in range(64):  # /proc may be covered by now, so no cap_last_cap: stop at the first refusal
        if _libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: EINVAL past the last capability, EPERM
            break  # without CAP_SETPCAP (unprivileged, no user namespace); no_new_privs covers exec then
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _check(_libc.capset(header, bytes(24)), "capset")  # two empty {effective, permitted, inheritable}
    conf.layers.append("no_capabilities")


def set_limits(limits: Limits, conf: Confinement) -> None:
    """Apply rlimits: address space, CPU seconds, processes, file size 0, open files, no core dumps."""
    cpu = max(1, int(limits.cpu_seconds))
    table = [
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, 0, 0),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits.processes, limits.processes),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]
    for which, soft, hard in table:
        resource.setrlimit(which, (soft, hard))
    conf.layers.append("rlimits")


# --- seccomp ---------------------------------------------------------------------------------------
# Numbers from 424 on are the same on every architecture: pidfd signals and the new mount API.
_COMMON = dict(pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438, open_tree=428, move_mount=429, fsopen=430,
               fsconfig=431, fsmount=432, fspick=433, mount_setattr=442)
_ARCH = {
    "x86_64": (0xC000003E, dict(socket=41, socketpair=53, fork=57, vfork=58, execve=59, execveat=322,
                                clone=56, clone3=435, kill=62, tkill=200, tgkill=234, ptrace=101,
                                mount=165, umount2=166, unshare=272, setns=308, chroot=161,
                                pivot_root=155, process_vm_readv=310, process_vm_writev=311, bpf=321,
                                perf_event_open=298, userfaultfd=323, keyctl=250, add_key=248,
                                request_key=249, io_uring_setup=425, setsid=112, setpgid=109, rt_sigqueueinfo=129,
                                rt_tgsigqueueinfo=297, **_COMMON)),
    "aarch64": (0xC00000B7, dict(socket=198, socketpair=199, execve=221, execveat=281, clone=220,
                                 clone3=435, kill=129, tkill=130, tgkill=131, ptrace=117, mount=40,
                                 umount2=39, unshare=97, setns=268, chroot=51, pivot_root=41,
                                 process_vm_readv=270, process_vm_writev=271, bpf=280,
                                 perf_event_open=241, userfaultfd=282, keyctl=219, add_key=217,
                                 request_key=218, io_uring_setup=425, setsid=157, setpgid=154, rt_sigqueueinfo=138,
                                 rt_tgsigqueueinfo=240, **_COMMON)),
}
_LD_W_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000
_EPERM = 0x00050000 | 1
_NR, _ARCH_OFF, _ARG0 = 0, 4, 16


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def seccomp_program(machine: str, own_pid: int) -> bytes:
    """BPF filter: deny sockets, new processes and threads, exec, signals to other processes, mounts.

    Threads are denied too: as uid 0 the kernel does not enforce RLIMIT_NPROC, so only this stops them.
    """
    arch, nr = _ARCH[machine]
    prog = [_insn(_LD_W_ABS, _ARCH_OFF), _insn(_JEQ, arch, jt=1), _insn(_RET, _KILL),
            _insn(_LD_W_ABS, _NR)]
    if machine == "x86_64":  # x32 ABI numbers
        prog += [_insn(_JGE, 0x40000000, jf=1), _insn(_RET, _EPERM)]
    for name in ("kill", "tkill", "tgkill"):  # allowed only towards this process itself
        prog += [_insn(_JEQ, nr[name], jf=4), _insn(_LD_W_ABS, _ARG0),
                 _insn(_JEQ, own_pid, jf=1), _insn(_RET, _ALLOW), _insn(_RET, _EPERM)]
    prog.append(_insn(_LD_W_ABS, _NR))
    for name, number in nr.items():
        if name not in ("kill", "tkill", "tgkill"):
            prog += [_insn(_JEQ, number, jf=1), _insn(_RET, _EPERM)]
    prog.append(_insn(_RET, _ALLOW))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(conf: Confinement) -> None:
    """Install the syscall filter (no_new_privs is already set); a refusal is recorded, not raised."""
    machine = platform.machine()
    if machine not in _ARCH:
        conf.lack("seccomp", f"no syscall table for architecture {machine}")
        return
    code = seccomp_program(machine, os.getpid())
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    try:
        _check(_libc.prctl(22, 2, ctypes.byref(prog), 0, 0), "prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)")
    except OSError as exc:
        conf.lack("seccomp", str(exc))
        return
    conf.layers.append("seccomp")
