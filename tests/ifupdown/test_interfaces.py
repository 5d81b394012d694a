"""The interfaces(5) parser: ifupdown's line rules, keywords, includes and collected errors."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from carpd.debian.ifupdown import interfaces


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _options(iface: interfaces.Iface) -> list[tuple[str, str, int]]:
    return [(o.name, o.value, o.where.line) for o in iface.options]


def test_comment_lines_are_skipped_but_a_later_hash_belongs_to_the_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        # a comment
          # an indented comment
        iface eth0 inet static
            address 10.0.0.2/24
            ucarp-password abc#def   # not a comment
        """)
    parsed = interfaces.parse(path)
    assert parsed.errors == []
    assert _options(parsed.ifaces[0]) == [
        ("address", "10.0.0.2/24", 4), ("ucarp-password", "abc#def   # not a comment", 5)]


def test_backslash_joins_lines_and_keeps_the_first_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        iface eth0 inet manual
            ucarp-xparam one \\
        two \\
          three
            ucarp-vid 3
        """)
    (iface,) = interfaces.parse(path).ifaces
    assert _options(iface) == [("ucarp-xparam", "one two   three", 2), ("ucarp-vid", "3", 5)]


def test_options_keep_their_order_and_their_repeats(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        iface eth0 inet static
            up echo 1
            address 10.0.0.2
            up echo 2
            ucarp-vid 3
            ucarp-vid 4
        """)
    (iface,) = interfaces.parse(path).ifaces
    assert [(n, v) for n, v, _ in _options(iface)] == [
        ("up", "echo 1"), ("address", "10.0.0.2"), ("up", "echo 2"), ("ucarp-vid", "3"),
        ("ucarp-vid", "4")]


def test_auto_allow_and_no_keywords_are_recorded(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        auto lo eth0
        allow-auto eth1
        allow-hotplug eth2 eth3
        no-auto-down eth0
        no-scripts eth3
        rename foo=bar
        iface lo inet loopback
        """)
    parsed = interfaces.parse(path)
    assert parsed.errors == []
    assert parsed.allow == {"auto": ["lo", "eth0", "eth1"], "hotplug": ["eth2", "eth3"]}
    assert (parsed.no_auto_down, parsed.no_scripts, parsed.renames) == (
        ["eth0"], ["eth3"], ["foo=bar"])


def test_source_is_relative_to_the_including_file_and_expands_wildcards(tmp_path: Path) -> None:
    _write(tmp_path / "etc" / "parts" / "b.cfg", "iface eth2 inet dhcp\n")
    _write(tmp_path / "etc" / "parts" / "a.cfg", "iface eth1 inet dhcp\n")
    path = _write(tmp_path / "etc" / "interfaces", """\
        iface eth0 inet dhcp
        source parts/*.cfg
        source parts/missing-is-skipped-like-ifupdown
        iface eth3 inet dhcp
        """)
    parsed = interfaces.parse(path)
    assert parsed.errors == []
    assert [i.name for i in parsed.ifaces] == ["eth0", "eth1", "eth2", "eth3"]
    assert parsed.ifaces[1].where == interfaces.Where(str(tmp_path / "etc/parts/a.cfg"), 1)


def test_source_directory_reads_only_run_parts_names_in_order(tmp_path: Path) -> None:
    for name in ("20-b", "10_a", "skip.conf", "skip~", ".hidden"):
        _write(tmp_path / "interfaces.d" / name, f"iface x{len(name)} inet dhcp\n")
    path = _write(tmp_path / "interfaces", "source-directory interfaces.d\n")
    parsed = interfaces.parse(path)
    assert [Path(f).name for f in parsed.files] == ["interfaces", "10_a", "20-b"]


@pytest.mark.parametrize("name", ["interfaces", "./interfaces", "{folder}/interfaces",
                                  "{folder}/../{base}/./interfaces"])
def test_a_file_that_sources_itself_by_any_name_is_a_cycle_error(tmp_path: Path,
                                                                 name: str) -> None:
    word = name.format(folder=tmp_path, base=tmp_path.name)
    path = _write(tmp_path / "interfaces", f"source {word}\niface eth0 inet dhcp\n")
    parsed = interfaces.parse(path)
    sourced = word if word.startswith("/") else f"{tmp_path}/{word}"
    assert parsed.errors == [f"{path}:1: source: {sourced}: a cycle: the file sources itself: "
                             "not read again"]
    assert [i.name for i in parsed.ifaces] == ["eth0"]


def test_a_cycle_through_other_files_names_each_of_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", "source a\n")
    _write(tmp_path / "a", "iface eth0 inet dhcp\nsource ./b\n")
    _write(tmp_path / "b", "source interfaces\niface eth1 inet dhcp\n")
    parsed = interfaces.parse(path)
    b, again = f"{tmp_path}/./b", f"{tmp_path}/./interfaces"  # named as sourced
    assert parsed.errors == [
        f"{b}:1: source: {again}: a cycle: {path} -> {tmp_path}/a -> {b} -> {again}: "
        "not read again"]
    assert [i.name for i in parsed.ifaces] == ["eth0", "eth1"]


def test_a_file_sourced_twice_without_a_cycle_is_read_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", "source common\nsource ./common\n")
    _write(tmp_path / "common", "iface eth0 inet dhcp\n")
    parsed = interfaces.parse(path)
    assert (parsed.errors, [i.name for i in parsed.ifaces]) == ([], ["eth0"])


def test_source_directory_of_its_own_folder_reads_the_others_and_not_itself(
        tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", "source-directory .\niface eth0 inet dhcp\n")
    _write(tmp_path / "eth1", "iface eth1 inet dhcp\n")
    parsed = interfaces.parse(path)
    assert parsed.errors == [f"{path}:1: source-directory: {tmp_path}/./interfaces: a cycle: "
                             "the file sources itself: not read again"]
    assert [i.name for i in parsed.ifaces] == ["eth1", "eth0"]


def test_a_chain_of_sources_deeper_than_the_limit_is_cut_with_an_error(tmp_path: Path) -> None:
    chain = 400
    for n in range(chain):
        _write(tmp_path / f"f{n}", f"iface e{n} inet dhcp\nsource f{n + 1}\n")
    parsed = interfaces.parse(tmp_path / "f0")
    limit = interfaces.MAX_SOURCE_DEPTH
    assert limit == 64
    assert parsed.errors == [
        f"{tmp_path}/f{limit}:2: source: {tmp_path}/f{limit + 1}: sourced files nest more than "
        f"{limit} deep below {tmp_path}/f0: not read"]
    assert len(parsed.files) == limit + 1


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    path = _write(tmp_path / "interfaces", "source pipe\niface eth0 inet dhcp\n")
    found: list[interfaces.Interfaces] = []
    reader = threading.Thread(target=lambda: found.append(interfaces.parse(path)), daemon=True)
    reader.start()
    reader.join(5.0)
    blocked = reader.is_alive()
    if blocked:  # let the reader go: it waits in open() for a writer
        with open(fifo, "w"):
            pass
        reader.join(5.0)
    assert not blocked, "parse blocked on the FIFO"
    assert found[0].errors == [f"{path}:1: cannot read {fifo}: not a regular file (a FIFO)"]
    assert [i.name for i in found[0].ifaces] == ["eth0"]


def test_a_device_that_never_ends_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", "source /dev/zero\n")
    assert interfaces.parse(path).errors == [
        f"{path}:1: cannot read /dev/zero: not a regular file (a character device)"]


def test_a_file_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as file:
        file.truncate(16 * 1024 * 1024 + 1)
    path = _write(tmp_path / "interfaces", "source big\niface eth0 inet dhcp\n")
    parsed = interfaces.parse(path)
    assert parsed.errors == [f"{path}:1: cannot read {big}: larger than 16 MiB: not read"]
    assert [i.name for i in parsed.ifaces] == ["eth0"]
    assert interfaces.MAX_FILE_BYTES == 16 * 1024 * 1024


def _many_stanzas(n: int) -> str:
    """n stanzas, each named by its own ``auto`` line, each with a continued option; then one
    line continued n times; then every name on one ``allow-hotplug`` line."""
    stanzas = "".join(f"auto e{i}\niface e{i} inet manual\n    up echo \\\n      {i}\n"
                      for i in range(n))
    return (stanzas + "iface last inet manual\n    down true \\\n" + "x \\\n" * (n - 1) + "x\n"
            + "allow-hotplug " + " ".join(f"e{i}" for i in range(n)) + "\n")


def _cpu_seconds(action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        action()
        best = min(best, time.process_time() - started)
    return best


def test_reading_and_looking_up_grow_linearly_with_the_stanzas(tmp_path: Path) -> None:
    # a complexity check, not a speed limit (bench/parse.py measures): four times the stanzas
    # take about four times as long when linear, sixteen when quadratic (0.1.0: auto lines,
    # continuations and the template lookup of carpctl check were)
    def parse_and_look_up(n: int) -> Callable[[], object]:
        path = _write(tmp_path / f"interfaces{n}", _many_stanzas(n))

        def run() -> object:
            parsed = interfaces.parse(path)
            return [(parsed.is_template(i), parsed.find(f"{i.name}:ucarp"))
                    for i in parsed.ifaces]
        return run

    small, large = 4000, 16000
    parsed = interfaces.parse(_write(tmp_path / "check", _many_stanzas(small)))
    assert (len(parsed.ifaces), len(parsed.allow["auto"]), parsed.errors) == (small + 1, small, [])
    assert parsed.ifaces[-1].options[0].value == "true" + " x" * small
    ratio = _cpu_seconds(parse_and_look_up(large)) / _cpu_seconds(parse_and_look_up(small))
    assert ratio < 8, f"{large} stanzas took {ratio:.1f} times as long as {small}"


def test_inherits_starts_from_a_copy_of_the_parent_options(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        iface carp inet static
            ucarp-password secret
            ucarp-advbase 2
        iface eth0 inet static inherits carp
            ucarp-vid 3
        iface eth1 inherits carp
            ucarp-vid 4
        """)
    parsed = interfaces.parse(path)
    eth0, eth1 = parsed.find("eth0")[0], parsed.find("eth1")[0]
    assert [o.name for o in eth0.options] == ["ucarp-password", "ucarp-advbase", "ucarp-vid"]
    assert (eth1.family, eth1.method) == ("inet", "static")
    assert parsed.errors == []


def test_mapping_takes_script_and_map_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        mapping eth0 eth1
            script /usr/local/sbin/map-scheme
            map HOME eth0-home
            map WORK eth0-work
        """)
    (mapping,) = interfaces.parse(path).mappings
    assert mapping.patterns == ["eth0", "eth1"]
    assert mapping.script == "/usr/local/sbin/map-scheme"
    assert mapping.maps == ["HOME eth0-home", "WORK eth0-work"]


def test_every_error_is_collected_with_its_place_and_parsing_carries_on(tmp_path: Path) -> None:
    path = _write(tmp_path / "interfaces", """\
        address 10.0.0.1
        iface eth0 inet bogus
            address 10.0.0.2
        iface eth1 ipv9 static
        iface eth2 inet static inherits nothing
        iface eth3
        mapping eth4
            address 1.2.3.4
        iface eth5 inet static extra
            mtu
        iface eth6 inet dhcp
        """)
    parsed = interfaces.parse(path)
    name = str(path)
    assert parsed.errors == [
        f"{name}:1: misplaced option (outside any iface or mapping stanza): address",
        f"{name}:2: iface eth0: unknown or no method 'bogus' for inet: allowed: bootp, dhcp, "
        "ipv4ll, loopback, manual, ppp, static, tunnel, wvdial",
        f"{name}:3: misplaced option (outside any iface or mapping stanza): address",
        f"{name}:4: iface eth1: unknown or no address family 'ipv9': allowed: inet, inet6, link, "
        "ipx, can",
        f"{name}:5: iface eth2: unknown iface to inherit from: nothing",
        f"{name}:6: iface eth3: unknown or no address family '': allowed: inet, inet6, link, "
        "ipx, can",
        f"{name}:8: misplaced option in mapping stanza: address",
        f"{name}:9: iface eth5: extra parameter not understood: extra",
        f"{name}:10: iface eth5 inet static: option with empty value: mtu",
        f"{name}:7: mapping: no script given",
    ]
    assert [i.name for i in parsed.ifaces] == ["eth5", "eth6"]


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    parsed = interfaces.parse(tmp_path / "nope")
    assert parsed.errors == [f"cannot read {tmp_path / 'nope'}: No such file or directory"]
