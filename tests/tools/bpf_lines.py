#!/usr/bin/env python3
"""Where a loaded BPF program spends its time, by source line, from `perf record -a` samples.

perf sees JIT-ed programs as `bpf_prog_<tag>_<name>` symbols, but Debian's perf and bpftool
cannot disassemble them (no libopcodes, no libbfd). The kernel still says where each source
line's code starts in the JIT image (`bpf_prog_info.jited_line_info`, one address per
`line_info` record) and `bpftool prog dump xlated linum` names each record's source line, so
a sample's address maps to the line whose code it was in. A cold load shows up as samples on
the line that issued it (or the next one): this is how the cold-cache costs in
docs/PERFORMANCE.md were located.

    # while the programs are loaded (e.g. during `cargo xtask bench cost --systems steer`):
    tests/tools/bpf_lines.py snapshot /tmp/lines steer steer_nat steer_reply
    perf record -a -o /tmp/perf.data -- sleep 20
    tests/tools/bpf_lines.py report /tmp/lines /tmp/perf.data [N]

Root only (bpf syscalls, perf). Standard library and bpftool/perf only.
"""
import bisect
import collections
import ctypes
import json
import os
import re
import struct
import subprocess
import sys

SYS_BPF = 321  # x86-64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_LEN = 232  # struct bpf_prog_info up to attach_btf_id

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def prog_info(fd, fields):
    """bpf_prog_info with `fields` [(offset, struct format, value)] set on the way in."""
    raw = bytearray(INFO_LEN)
    for off, fmt, val in fields:
        struct.pack_into(fmt, raw, off, val)
    buf = ctypes.create_string_buffer(bytes(raw), INFO_LEN)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, INFO_LEN, ctypes.addressof(buf)))
    return buf.raw


def line_map(prog_id):
    """Each line_info record's instruction offset and the JIT address its code starts at, and
    the JIT ranges of the program and its subprograms (perf names those with their own tags)."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("=III", prog_id, 0, 0))
    try:
        first = prog_info(fd, [])
        nr_ksyms, nr_lens = struct.unpack_from("=II", first, 104)
        (nr_line,) = struct.unpack_from("=I", first, 148)
        nr_jline, line_rec, jline_rec = struct.unpack_from("=III", first, 168)
        lines = ctypes.create_string_buffer(line_rec * nr_line)
        jlines = ctypes.create_string_buffer(jline_rec * nr_jline)
        ksyms = ctypes.create_string_buffer(8 * nr_ksyms)
        lens = ctypes.create_string_buffer(4 * nr_lens)
        prog_info(fd, [
            (104, "=I", nr_ksyms), (108, "=I", nr_lens),
            (112, "=Q", ctypes.addressof(ksyms)), (120, "=Q", ctypes.addressof(lens)),
            (148, "=I", nr_line), (152, "=Q", ctypes.addressof(lines)),
            (160, "=Q", ctypes.addressof(jlines)), (168, "=I", nr_jline),
            (172, "=I", line_rec), (176, "=I", jline_rec),
        ])
    finally:
        os.close(fd)
    insn = [struct.unpack_from("=I", lines.raw, i * line_rec)[0] for i in range(nr_line)]
    addr = list(struct.unpack("=%dQ" % nr_jline, jlines.raw))
    starts = struct.unpack("=%dQ" % nr_ksyms, ksyms.raw)
    sizes = struct.unpack("=%dI" % nr_lens, lens.raw)
    return {"insn": insn, "addr": addr, "ranges": [[a, a + n] for a, n in zip(starts, sizes)]}


def snapshot(out, names):
    os.makedirs(out, exist_ok=True)
    progs = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], check=True,
                                      capture_output=True, text=True).stdout)
    found = 0
    for p in progs:
        if p.get("name") not in names:
            continue
        pid = p["id"]
        m = line_map(pid)
        m["name"], m["tag"] = p["name"], p["tag"]
        xl = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(pid), "linum"],
                            check=True, capture_output=True, text=True).stdout
        m["xlated"] = xl
        with open(os.path.join(out, "%d.json" % pid), "w") as f:
            json.dump(m, f)
        found += 1
        print("program %d %s: %d lines" % (pid, p["name"], len(m["insn"])))
    if not found:
        sys.exit("no loaded program named %s" % " or ".join(names))


def annotations(xlated):
    """Instruction index -> (source text, file:line) of the line record starting there."""
    ann, cur = {}, None
    for l in xlated.split("\n"):
        if l.startswith("; "):
            m = re.search(r"\[file:(\S+) line_num:(\d+)", l)
            text = l[2:l.rfind(" [file:")].strip() if " [file:" in l else l[2:]
            where = "%s:%s" % (m.group(1).split("/")[-1], m.group(2)) if m else "?"
            cur = (text[:80], where)
            continue
        m = re.match(r"\s*(\d+): ", l)
        if m and cur is not None:
            ann.setdefault(int(m.group(1)), cur)
            cur = None
    return ann


def report(out, perf_data, top):
    progs = []
    for f in sorted(os.listdir(out)):
        if f.endswith(".json"):
            with open(os.path.join(out, f)) as fh:
                m = json.load(fh)
            order = sorted(range(len(m["addr"])), key=lambda i: m["addr"][i])
            progs.append((m, [m["addr"][i] for i in order], [m["insn"][i] for i in order],
                          annotations(m["xlated"])))
    script = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym"],
                            capture_output=True, text=True).stdout
    by_line, by_sym, total, in_progs = collections.Counter(), collections.Counter(), 0, 0
    for l in script.split("\n"):
        f = l.split()
        if len(f) < 2:
            continue
        total += 1
        sym, ip = f[1], int(f[0], 16)
        p = next((p for p in progs if any(a <= ip < b for a, b in p[0]["ranges"])), None)
        if p is None:
            continue
        in_progs += 1
        by_sym[sym] += 1
        m, addrs, insns, ann = p
        k = bisect.bisect_right(addrs, ip) - 1
        text, where = ann.get(insns[k], ("?", "?")) if k >= 0 else ("?", "?")
        by_line[(m["name"], where, text)] += 1
    print("%d samples, %d in the programs' own code" % (total, in_progs))
    for s, n in by_sym.most_common():
        print("%6d %5.1f%%  %s" % (n, 100.0 * n / max(in_progs, 1), s))
    print("--- by source line (program, file:line, code)")
    for (name, where, text), n in by_line.most_common(top):
        print("%6d %5.1f%%  %-12s %-22s %s" % (n, 100.0 * n / max(in_progs, 1), name, where, text))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "snapshot":
        snapshot(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else 40)
    else:
        sys.exit(__doc__)
