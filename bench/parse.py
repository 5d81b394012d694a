"""`carpctl check` of large interfaces files: 0.1.0's parser against this tree's, in the same run.

Each file holds N ucarp stanzas the way users write them, each with an ``auto`` line, an option
continued over three lines (backslashes) and its ``IFACE:ucarp`` stanza; 2N stanzas in all::

    auto e7
    iface e7 inet static
        address 10.1.0.8/16
        ucarp-vid 8
        ucarp-vip 10.2.0.1
        ucarp-password s3cret
        ucarp-xparam one \\
          two \\
          three
    iface e7:ucarp inet static
        address 10.2.0.1/32

The default scripts are installed (/usr/share/carpd/vip-up and vip-down exist: the project's
share/ is mounted there in a private mount namespace, as the ifupdown tests do), so every stanza
is checked to the end, including the search for its IFACE:ucarp stanza.  That is how a real
system runs it; without them each stanza stops at "must be an existing executable file".

For each version and size: ``parse`` is the best of REPS in-process runs of
``interfaces.parse``; ``carpctl check`` is the best of REPS wall times of the whole command
(``python -m carpd.debian.carpctl check FILE``: start-up, parse, check every stanza, password
warnings) as a user runs it.  0.1.0 runs once per size (it is quadratic: minutes at 20,000).

ucarp has no counterpart: Debian's ucarp hook reads no interfaces file (ifupdown hands it the
stanza as IF_* variables) and has no checker, so the table says "n/a".

Runs as root (unshare + mount).  Nothing outside the run's temporary folder is changed.

Usage: .venv/bin/python -m bench.parse [--sizes 10000 20000] [--reps 3] [--no-baseline]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, machine_line, table, write_json

BASELINE = "8210a9e"
"""The last commit with 0.1.0's parser and checker (before issue 10 item 7)."""
UCARP_NOTE = ("ucarp: n/a: Debian's ucarp hook reads no interfaces file (ifupdown hands it one "
              "stanza as IF_* variables) and has no checker: nothing to compare")


def stanzas(count: int) -> str:
    return "".join(
        f"auto e{n}\niface e{n} inet static\n    address 10.1.{n // 250}.{n % 250 + 1}/16\n"
        f"    ucarp-vid {n % 255 + 1}\n    ucarp-vip 10.2.0.1\n    ucarp-password s3cret\n"
        "    ucarp-xparam one \\\n      two \\\n      three\n"
        f"iface e{n}:ucarp inet static\n    address 10.2.0.1/32\n" for n in range(count))


def baseline_source(folder: Path) -> Path:
    """src/ of :data:`BASELINE`, extracted from git (the working tree is not touched)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "src/carpd"],
                             capture_output=True, check=True).stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def share_overlay(folder: Path) -> Path:
    """A folder holding carpd/ (the project's share/), to lay over /usr/share."""
    shutil.copytree(REPO / "share", folder / "carpd")
    return folder


def in_private_mounts(share: Path, command: list[str],
                      source: Path) -> subprocess.CompletedProcess[str]:
    """``command`` run from the repository root, importing carpd from ``source`` first."""
    mount = f"mount -t overlay overlay -o lowerdir={shlex.quote(str(share))}:/usr/share /usr/share"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"{mount} && exec {shlex.join(command)}"],
                          capture_output=True, text=True, check=False, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(source)})


# ---- what runs inside the mount namespace --------------------------------------------------


def worker(source: str, path: str, reps: int) -> dict[str, Any]:
    """Run with PYTHONPATH=source (see :func:`in_private_mounts`), as is its carpctl command."""
    from carpd.debian import carpctl
    from carpd.debian.ifupdown import interfaces

    assert carpctl.__file__.startswith(source), carpctl.__file__
    assert Path("/usr/share/carpd/vip-up").is_file()
    parse = min(_seconds(lambda: interfaces.parse(path)) for _ in range(reps))
    command = [sys.executable, "-c", "import sys; "
               "from carpd.debian.carpctl import main; sys.exit(main(sys.argv[1:]))", "check", path]
    runs = [_command_seconds(command) for _ in range(reps)]
    return {"parse": parse, "check": min(seconds for seconds, _out in runs),
            "output": runs[0][1]}


def _seconds(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _command_seconds(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    return seconds, (result.stdout + result.stderr).strip().splitlines()[-1]


# ---- the run -------------------------------------------------------------------------------


def measure(share: Path, source: Path, path: Path, reps: int) -> dict[str, Any]:
    result = in_private_mounts(share, [sys.executable, "-m", "bench.parse", "--worker",
                                       str(source), str(path), str(reps)], source)
    if result.returncode != 0:
        raise SystemExit(f"bench/parse.py: the measurement failed:\n{result.stderr}")
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured


def version_of_tree() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"this tree ({head}{' + changes' if dirty else ''})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000],
                   help="ucarp stanzas per file (each with its IFACE:ucarp stanza)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-baseline", action="store_true", help=f"skip 0.1.0 ({BASELINE})")
    p.add_argument("--json")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        source, path, reps = args.worker
        print(json.dumps(worker(source, path, int(reps))))
        return 0
    if os.geteuid() != 0:
        print("bench/parse.py: needs root (a private mount namespace for /usr/share/carpd)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="carpd-bench-parse-") as directory:
        return run(Path(directory), args)


def run(folder: Path, args: argparse.Namespace) -> int:
    share = share_overlay(folder / "share")
    versions = [(version_of_tree(), REPO / "src", args.reps)]
    if not args.no_baseline:
        versions.insert(0, (f"0.1.0 ({BASELINE})", baseline_source(folder / "baseline"), 1))
    rows, results = [], []
    for size in args.sizes:
        path = folder / f"interfaces-{size}"
        path.write_text(stanzas(size))
        path.chmod(0o600)
        for name, source, reps in versions:
            measured = measure(share, source, path, reps)
            results.append({"version": name, "stanzas": size, **measured})
            rows.append([name, f"{size} (+{size} IFACE:ucarp)", f"{measured['parse']:.3f}",
                         f"{measured['check']:.2f}", measured["output"].split(": ", 1)[-1],
                         "n/a"])
            print(f"  {name}, {size}: parse {measured['parse']:.3f} s, carpctl check "
                  f"{measured['check']:.2f} s", file=sys.stderr, flush=True)
    print(machine_line())
    print(table(["version", "ucarp stanzas", "parse (s)", "carpctl check (s)", "its verdict",
                 "ucarp"], rows))
    print(UCARP_NOTE)
    write_json(args.json, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
