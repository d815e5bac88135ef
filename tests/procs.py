"""Finding the NVFlare simulator's processes, for tests that kill one of them."""

from __future__ import annotations

from pathlib import Path


def simulator_pid(marker: bytes, client: str | None = None,
                  under: str | Path | None = None) -> int | None:
    """pid of the process whose command line holds ``marker`` (e.g. ``b"simulator_worker"``)
    and, if given, ``--client <client>`` and the path ``under`` (the test's workspace, so a
    simulator of another run on this machine is never touched); None if there is none."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(marker in a for a in args):
            continue
        if under is not None and not any(str(under).encode() in a for a in args):
            continue
        if client is None or (b"--client" in args
                              and args[args.index(b"--client") + 1] == client.encode()):
            return int(proc.name)
    return None


def kill_all_under(path: str | Path) -> int:
    """SIGKILL every process whose command line mentions ``path`` (a test's workspace): the
    simulator's server and workers start their own process groups. Returns how many."""
    import os
    import signal

    key, n = str(path).encode(), 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if key in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                n += 1
        except OSError:
            continue
    return n
