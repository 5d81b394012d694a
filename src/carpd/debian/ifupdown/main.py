"""``carpd-ifupdown``: the ifupdown hooks' command.

- ``carpd-ifupdown hook``               what /etc/network/if-{up,down}.d/carpd run (reads ifupdown's
                                        environment)
- ``carpd-ifupdown supervise IFACE``    keeps IFACE's engine running where systemd is not PID 1
- ``carpd-ifupdown release IFACE``      after IFACE's engine is gone: the VIP goes too (the systemd
                                        unit's ExecStopPost)
- ``carpd-ifupdown regen IFACE``        write /run/carpd/IFACE.conf again from IFACE's stanza with
                                        this carpd's code (carpd's postinst, before restarting
                                        an engine after an upgrade); ``--hand-over``: while the
                                        engine stops, make sure its peers hear it bow out
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from carpd.debian.ifupdown import runtime


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpd-ifupdown",
                                description="carpd's ifupdown integration (run by its hooks)")
    p.add_argument("--run-dir", type=Path, default=runtime.RUN_DIR,
                   help=f"where the per-interface files live (default {runtime.RUN_DIR})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("hook", help="start or stop IFACE's engine, from ifupdown's environment")
    for name, text in (("supervise", "run IFACE's engine, restart it when it dies"),
                       ("release", "remove the VIP of IFACE's engine, which is gone")):
        command = sub.add_parser(name, help=text)
        command.add_argument("interface")
        command.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS)
    regen = sub.add_parser("regen", help="write IFACE's engine options again from its stanza")
    regen.add_argument("interface")
    regen.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS)
    regen.add_argument("--hand-over", action="store_true",
                       help="instead: while the engine stops, make sure its peers hear it bow out")
    return p


def _crashed(env: dict[str, str]) -> bool:
    """Under systemd's ExecStopPost: whether the engine did not exit cleanly on its own."""
    return not (env.get("EXIT_CODE") == "exited" and env.get("EXIT_STATUS") == "0")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hook":
        from carpd.debian.ifupdown import hook

        return hook.run(os.environ, args.run_dir)
    if args.command == "regen":
        from carpd.debian.ifupdown import regen

        if args.hand_over:
            return regen.run_hand_over(args.interface, args.run_dir)
        return regen.run(args.interface, args.run_dir)
    paths = runtime.Paths(args.interface, args.run_dir)
    if args.command == "supervise":
        from carpd.debian.ifupdown import supervisor

        return supervisor.supervise(paths)
    for line in runtime.release(paths, _crashed(dict(os.environ))):
        print(f"carpd: {args.interface}: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
