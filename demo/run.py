"""`make demo`: a live three-node CARP cluster in network namespaces, failing over while you watch.

Nodes a and c run carpd; node b runs Debian's ucarp when it is installed (carpd otherwise).  The
demo waits for an election, then

1. stops the MASTER with SIGTERM: carpd bows out and a peer takes over at once;
2. kills the new MASTER with SIGKILL (a crash): the next peer takes over after the master-down
   interval, which the demo prints next to the protocol's figure.

Times come from the kernel's receive timestamps of the adverts on the bridge.  Everything lives
in namespaces named after this process and is removed at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time

from lab.netns import UCARP, VIP, Daemon, Network, network, wait_for

SKEWS = {"a": 0, "b": 50, "c": 100}


def show(net: Network, daemons: dict[str, Daemon], note: str) -> None:
    rows = []
    for name, daemon in daemons.items():
        alive = "running" if daemon.alive() else "stopped"
        holds = "holds VIP" if daemon.node.has(VIP) else ""
        rows.append(f"  {name} {daemon.node.address!s:<10} {daemon.kind:<6} advskew "
                    f"{SKEWS[name]:<4} {alive:<8} {holds}")
    print(f"\n[{time.strftime('%H:%M:%S')}] {note}")
    print("\n".join(rows))


def master(daemons: dict[str, Daemon]) -> str | None:
    holders = [n for n, d in daemons.items() if d.alive() and d.node.has(VIP)]
    return holders[0] if len(holders) == 1 else None


def settled_master(daemons: dict[str, Daemon], exclude: tuple[str, ...] = ()) -> str:
    """The one node holding the VIP, once that has not changed for 1.5 s."""
    def stable() -> str | None:
        name = master(daemons)
        if name is None or name in exclude:
            return None
        time.sleep(1.5)
        return name if master(daemons) == name else None

    return wait_for(stable, 20)


def takeover_time(net: Network, old: Daemon, since: float) -> tuple[float, str]:
    """From the old master's last advert on the wire to the first advert of another node."""
    first = net.capture.wait_frame(lambda f: f.source != old.node.address, 10, since)
    last_old = [f for f in net.capture.frames(source=old.node.address, since=since - 5)
                if f.time <= first.time][-1]
    return first.time - last_old.time, str(first.source)


def run_demo(net: Network) -> None:
    kind_b = "ucarp" if shutil.which(UCARP) else "carpd"
    daemons: dict[str, Daemon] = {}
    for i, name in enumerate("abc"):
        node = net.add_node(f"10.9.0.{i + 1}", name)
        daemons[name] = node.start(kind_b if name == "b" else "carpd", advskew=SKEWS[name],
                                   preempt=True)
    print(f"VIP {VIP}; vhid 1; advbase 1; master-down interval = 3 s + advskew/256")
    show(net, daemons, "started: every node begins as BACKUP")
    first = settled_master(daemons)
    show(net, daemons, f"elected: {first} is MASTER (lowest advskew)")

    since = time.time()
    daemons[first].signal(signal.SIGTERM)
    daemons[first].wait_exit(10)
    second = settled_master(daemons, exclude=(first,))
    took, by = takeover_time(net, daemons[first], since)
    show(net, daemons, f"{first} stopped (SIGTERM) with a bow-out advert: {by} advertised "
                       f"{took * 1000:.1f} ms later (ucarp's silent exit costs ~3 s); "
                       f"{second} holds the VIP")

    since = time.time()
    daemons[second].kill()
    daemons[second].node.remove_address(VIP)  # what its supervisor does after a crash
    third = settled_master(daemons, exclude=(first, second))
    took, _by = takeover_time(net, daemons[second], since)
    expected = 3 + SKEWS[third] / 256
    show(net, daemons, f"{second} crashed (SIGKILL): {third} took over {took:.3f} s after its "
                       f"last advert (protocol: {expected:.3f} s)")


def main() -> int:
    try:
        with network("carpdemo", "carpd-demo-") as net:
            run_demo(net)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        print("\ncleaned up: namespaces deleted, processes ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
