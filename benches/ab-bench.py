#!/usr/bin/env python3
"""rtgt's own A/B benchmark: rtgt's tgtd against Debian's tgtd, same medium.

Starts rtgt's tgtd and (when installed) Debian's /usr/sbin/tgtd, each with one
LUN on its own file in /dev/shm (tmpfs: the medium is the same and never the
bottleneck), and drives both with real userspace initiators over loopback:
`qemu-img bench` (QEMU's iSCSI driver, libiscsi underneath) for the
sequential workloads and `iscsi-perf` (libiscsi) for random reads. For every
workload it reports IOPS, MB/s and the target's CPU time per I/O in
microseconds (all of the daemon's threads, also exited ones, from /proc/PID/stat):
on a machine where initiator and target share the cores, CPU per I/O is what
tells target efficiency apart.

Rounds are paired: each round runs every workload on both targets, in
alternating order (rotating, with more than two), and the table shows the median of the rounds and the
ratios rtgt/tgt of the medians (IOPS: higher is better; CPU: lower is better).

When iperf3 is installed, every round also measures what loopback TCP carries
(one 3-second single-stream `iperf3` run against a one-off server on
127.0.0.1), and the output gives its median and the 128k workloads' MB/s as a
percentage of it: what one TCP connection carries on this machine when each
side copies its data once, the yardstick for a target's large transfers.

--medium DIR puts the LUN image files in DIR instead of /dev/shm (with
--engines it may also be a block device, used as the LUN itself and
OVERWRITTEN by the write workloads; e.g. a loop device over a tmpfs file
takes the disk's own noise out of an engine comparison); on a medium
that is not tmpfs each image is first written full of zeros (so that reads hit
allocated blocks, not holes), which needs 1 GiB free per image (one per
daemon; one in all with --engines). --bsoflags
FLAGS (e.g. `direct`) is passed to tgtadm for every LUN.

--engines LIST (comma list, e.g. rdwr,aio,io_uring) compares rtgt's backing
store engines instead of rtgt with tgt: one rtgt daemon per engine (its LUN
made with `--bstype ENGINE`, all on one shared file in --medium, so that only
the engine differs), the same paired and alternated rounds, and a table with one column group per engine and, for
every engine after the first, its ratios to the FIRST engine of the list
(engine/first: IOPS higher is better, CPU lower is better). For instance:
  benches/ab-bench.py --engines rdwr,aio,io_uring --medium /var/tmp --bsoflags direct

Usage:
  benches/ab-bench.py [--rounds 5] [--quick] [--bstype rdwr] [--json OUT]
                      [--rtgt-dir target/release] [--tgt /usr/sbin/tgtd]
                      [--medium /dev/shm] [--bsoflags direct]
                      [--engines rdwr,aio,io_uring] [--workloads read-128k-qd8,...]
Run it as root (the daemons put their management socket in /var/run/tgtd),
after `cargo build --release`. Debian packages: libiscsi-bin, qemu-utils,
qemu-block-extra, tgt (optional: without it only rtgt is measured), iperf3
(optional: without it there is no loopback TCP baseline). Every daemon,
iperf3 server and file the script starts or creates is stopped or removed at
the end, also on error, Ctrl-C or SIGTERM.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import time

IQN_RTGT = "iqn.2026-11.org.rtgt:bench"
IQN_TGT = "iqn.2026-11.org.rtgt:bench-tgt"
LUN_SIZE = 1 << 30
IPERF_SECONDS = 3

# name, kind, block size, queue depth, write, I/Os per run (full mode)
WORKLOADS = [
    ("write-4k-qd1", "qemu", "4k", 1, True, 20000),
    ("read-4k-qd1", "qemu", "4k", 1, False, 20000),
    ("write-4k-qd32", "qemu", "4k", 32, True, 100000),
    ("read-4k-qd32", "qemu", "4k", 32, False, 100000),
    ("write-128k-qd8", "qemu", "128k", 8, True, 40000),
    ("read-128k-qd8", "qemu", "128k", 8, False, 40000),
    ("randread-4k-qd32", "perf", "4k", 32, False, 5),  # iscsi-perf: seconds
]
# The workloads whose MB/s is compared with loopback TCP.
LOOPBACK_WORKLOADS = ("read-128k-qd8", "write-128k-qd8")


class BenchError(Exception):
    """A failure to report in one message; raised after what was started is
    stopped (or on the way to the `finally` that stops it)."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_control_port():
    for n in range(40, 200):
        if not os.path.exists(f"/var/run/tgtd/socket.{n}"):
            return n
    raise BenchError("no free tgtd control port under /var/run/tgtd")


def cpu_ns(pid):
    """CPU time the daemon has used, all threads, in ns: utime + stime of
    /proc/PID/stat, which (unlike the per-thread schedstat files) keeps the
    time of threads that have exited, such as io_uring's io-wq workers."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def fs_type(path):
    """The file system type of the mount that holds path (from mountinfo)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            pre, post = line.split(" - ", 1)
            mnt = pre.split()[4].replace("\\040", " ")
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, post.split()[0]
    return kind


def make_image(path, allocate):
    """A LUN_SIZE file: sparse, or (allocate) written full of zeros, synced
    and dropped from the page cache, so that reads, O_DIRECT ones too, hit
    real blocks and every engine starts from a cold cache."""
    with open(path, "wb") as f:
        if not allocate:
            f.truncate(LUN_SIZE)
            return
        try:
            os.posix_fallocate(f.fileno(), 0, LUN_SIZE)
        except OSError:
            pass  # not supported here: the zeros below allocate anyway
        zeros = bytes(1 << 20)
        for _ in range(LUN_SIZE // len(zeros)):
            f.write(zeros)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


class Target:
    """One daemon with one LUN on its own file in the medium directory, or
    on `shared_image` (made and removed by the caller)."""

    def __init__(self, name, tgtd, tgtadm, iqn, bstype, medium, bsoflags, allocate,
                 shared_image=None):
        self.name, self.iqn, self.tgtadm = name, iqn, tgtadm
        self.proc = self.log = self.control = None
        self.shared = shared_image is not None
        self.image = shared_image or os.path.join(medium, f"ab-bench-{name}-{os.getpid()}.img")
        self.engine = None
        try:
            self._start(tgtd, bstype, bsoflags, allocate)
        except BaseException:
            self.stop()
            raise

    def _start(self, tgtd, bstype, bsoflags, allocate):
        if not self.shared:
            if allocate:
                print(f"{self.name}: writing {LUN_SIZE >> 20} MiB of zeros to {self.image}",
                      flush=True)
            try:
                make_image(self.image, allocate)
            except OSError as e:
                raise BenchError(f"{self.name}: cannot create {self.image}: {e}") from None
        self.port, self.control = free_port(), free_control_port()
        self.log = open(f"/tmp/ab-bench-{self.name}-{os.getpid()}.log", "w")
        self.proc = subprocess.Popen(
            [tgtd, "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not self._ready():
            if time.time() > deadline or self.proc.poll() is not None:
                raise BenchError(f"{self.name}: {tgtd} did not start{self.log_tail()}")
            time.sleep(0.1)
        lu = ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
              "-b", self.image]
        if bstype:
            lu += ["-E", bstype]
        if bsoflags:
            lu += ["--bsoflags", bsoflags]
        for args in (["--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn], lu,
                     ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]):
            self.adm(args)
        # The engine the LUN really runs on (rtgt's io_uring falls back to
        # rdwr where the kernel has io_uring disabled).
        m = re.search(r"LUN: 1\b.*?Backing store type: (\S+)",
                      self.adm(["--op", "show", "--mode", "target"]), re.S)
        self.engine = m.group(1) if m else None
        if bstype and self.engine and self.engine != bstype:
            print(f"warning: {self.name}: asked for --bstype {bstype}, "
                  f"the LUN runs on {self.engine}", flush=True)

    def _ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
        except OSError:
            return False
        r = subprocess.run([self.tgtadm, "-C", str(self.control), "--op", "show",
                            "--mode", "system"], capture_output=True)
        return r.returncode == 0

    def adm(self, args):
        r = subprocess.run([self.tgtadm, "-C", str(self.control), "--lld", "iscsi"] + args,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"{self.name}: tgtadm {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def log_tail(self):
        """The end of the daemon's log, for an error message (the log file
        itself is removed with the rest)."""
        try:
            self.log.flush()
            with open(self.log.name) as fh:
                tail = fh.read()[-600:].strip()
        except (OSError, AttributeError):
            return ""
        return f"; its log ends with:\n{tail}" if tail else " (its log is empty)"

    @property
    def url(self):
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/1"

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            # Debian's tgtd ignores SIGTERM: it is stopped with SIGKILL.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        paths = [None if self.shared else self.image, self.log and self.log.name]
        if self.proc is not None:
            # The management socket (and tgt's lock file next to it) stay
            # behind when the daemon is killed: without this, every run would
            # use up control ports for good.
            sock = f"/var/run/tgtd/socket.{self.control}"
            paths += [sock, sock + ".lock"]
        for path in paths:
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.log is not None:
            self.log.close()


def run_workload(target, w, quick):
    name, kind, size, depth, write, amount = w
    if quick:
        amount = max(1, amount // 5) if kind == "qemu" else 2
    if target.proc.poll() is not None:
        raise BenchError(f"{target.name}: tgtd exited with status {target.proc.returncode}"
                         f" before {name}{target.log_tail()}")
    before = cpu_ns(target.proc.pid)
    try:
        if kind == "qemu":
            cmd = ["qemu-img", "bench", "-f", "raw", "-c", str(amount), "-d", str(depth),
                   "-s", size] + (["-w"] if write else []) + [target.url]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
            if r.returncode != 0 or not m:
                raise BenchError(f"{target.name} {name}: {r.stdout[-300:]}{r.stderr[-300:]}")
            seconds, ios = float(m.group(1)), amount
        else:
            blocks = {"4k": 8}[size]
            cmd = ["iscsi-perf", "-m", str(depth), "-b", str(blocks), "-r", "-t", str(amount),
                   target.url]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=amount + 60)
            m = re.findall(r"iops average (\d+)", r.stdout)
            if not m:
                raise BenchError(f"{target.name} {name}: {r.stdout[-300:]}{r.stderr[-300:]}")
            iops = int(m[-1])
            seconds, ios = float(amount), iops * amount
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{target.name} {name}: {e.cmd[0]} timed out after {e.timeout} s") \
            from None
    used = cpu_ns(target.proc.pid) - before
    bytes_per_io = {"4k": 4096, "128k": 131072}[size]
    iops = ios / seconds
    return {"iops": iops, "mbps": iops * bytes_per_io / 1e6, "cpu_us": used / 1e3 / ios}


def tcp_listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: TCP_LISTEN
                return True
    return False


def loopback_tcp_mbps():
    """One iperf3 single-stream run over loopback: MB/s (1e6 bytes) received.
    The server is one-off (-1: it exits after its client); it is killed
    anyway if anything goes wrong, and always reaped."""
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 5
        while not tcp_listening(port):
            if server.poll() is not None:
                raise BenchError(f"iperf3 server on port {port} exited with status "
                                 f"{server.returncode} at start")
            if time.time() > deadline:
                raise BenchError(f"iperf3 server did not listen on 127.0.0.1:{port}")
            time.sleep(0.05)
        try:
            r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port),
                                "-t", str(IPERF_SECONDS), "-J"],
                               capture_output=True, text=True, timeout=IPERF_SECONDS + 30)
        except subprocess.TimeoutExpired:
            raise BenchError("iperf3 client timed out") from None
        try:
            out = json.loads(r.stdout)
        except ValueError:
            raise BenchError(f"iperf3 client gave no JSON: "
                             f"{r.stdout[-300:]}{r.stderr[-300:]}") from None
        if r.returncode != 0 or "error" in out:
            raise BenchError(f"iperf3 client: {out.get('error', r.stderr[-300:])}")
        try:
            bps = out["end"]["sum_received"]["bits_per_second"]
        except (KeyError, TypeError):
            raise BenchError("iperf3 JSON has no end.sum_received.bits_per_second") from None
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # killed below
        return bps / 8 / 1e6
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def ratio(a, b):
    return a / b if b else float("nan")


def print_ab_table(med):
    head = f"{'workload':18} {'rtgt IOPS':>10} {'MB/s':>8} {'cpu us/IO':>9}"
    if "tgt" in med:
        head += f" {'tgt IOPS':>10} {'MB/s':>8} {'cpu us/IO':>9} {'IOPS x':>7} {'CPU x':>6}"
    print(head)
    for w in WORKLOADS:
        r = med["rtgt"][w[0]]
        line = f"{w[0]:18} {r['iops']:10.0f} {r['mbps']:8.1f} {r['cpu_us']:9.2f}"
        if "tgt" in med:
            b = med["tgt"][w[0]]
            line += (f" {b['iops']:10.0f} {b['mbps']:8.1f} {b['cpu_us']:9.2f}"
                     f" {ratio(r['iops'], b['iops']):7.2f}"
                     f" {ratio(r['cpu_us'], b['cpu_us']):6.2f}")
        print(line)


def print_engines_table(med, names):
    """One column group per engine; after every engine but the first, its
    ratios to the first one (engine/first)."""
    first = names[0]
    widths = {n: max(10, len(n) + 5) for n in names}
    head = f"{'workload':18}"
    for i, n in enumerate(names):
        head += f" {n + ' IOPS':>{widths[n]}} {'MB/s':>8} {'cpu us/IO':>9}"
        if i:
            head += f" {'IOPS x':>7} {'CPU x':>6}"
    print(head)
    for w in WORKLOADS:
        base = med[first][w[0]]
        line = f"{w[0]:18}"
        for i, n in enumerate(names):
            r = med[n][w[0]]
            line += f" {r['iops']:{widths[n]}.0f} {r['mbps']:8.1f} {r['cpu_us']:9.2f}"
            if i:
                line += (f" {ratio(r['iops'], base['iops']):7.2f}"
                         f" {ratio(r['cpu_us'], base['cpu_us']):6.2f}")
        print(line)
    if len(names) > 1:
        print(f"IOPS x, CPU x: engine / {first} (IOPS: higher is better; CPU: lower is better)")


def run(a):
    rounds = 1 if a.quick else a.rounds
    for tool in ("qemu-img", "iscsi-perf"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is missing (Debian: qemu-utils qemu-block-extra "
                             f"libiscsi-bin)")
    engines = [e.strip() for e in a.engines.split(",")] if a.engines else []
    if a.engines is not None:
        if not engines or "" in engines or len(set(engines)) != len(engines):
            raise BenchError(f"--engines {a.engines!r}: give distinct engine names, "
                             f"comma-separated (e.g. rdwr,aio,io_uring)")
        if a.bstype:
            raise BenchError("--engines and --bstype exclude each other "
                             "(--engines sets every LUN's bstype)")
    device = os.path.exists(a.medium) and stat.S_ISBLK(os.stat(a.medium).st_mode)
    if device and not engines:
        raise BenchError(f"--medium {a.medium}: a block device needs --engines "
                         f"(its blocks are shared by the daemons; tgt's are not compared)")
    if not device and not os.path.isdir(a.medium):
        raise BenchError(f"--medium {a.medium}: not a directory or a block device")
    fstype = "block device" if device else fs_type(a.medium)
    allocate = not device and fstype not in ("tmpfs", "ramfs")
    rtgt_tgtd = os.path.join(a.rtgt_dir, "tgtd")
    rtgt_tgtadm = os.path.join(a.rtgt_dir, "tgtadm")
    for path in (rtgt_tgtd, rtgt_tgtadm):
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} is missing: run `cargo build --release` first "
                             f"(or give --rtgt-dir)")
    with_tgt = not engines and os.access(a.tgt, os.X_OK)
    if not engines and not with_tgt:
        print(f"{a.tgt} not installed: measuring rtgt only")
    if allocate:
        daemons = 1 if engines else 1 + with_tgt
        st = os.statvfs(a.medium)
        if st.f_bavail * st.f_frsize < daemons * LUN_SIZE + (256 << 20):
            raise BenchError(f"--medium {a.medium}: {daemons} GiB of images (+256 MiB) "
                             f"needed, {st.f_bavail * st.f_frsize / 2**30:.1f} GiB free")
    iperf = shutil.which("iperf3")
    if not iperf:
        print("iperf3 not installed (Debian: iperf3): no loopback TCP baseline")

    targets = []
    loopback = []
    shared = None
    try:
        if engines:
            # One image for every engine (they run one at a time): the same
            # blocks of the same medium, so only the engine differs.
            if device:
                # The LUN is the device itself (its contents are overwritten
                # by the write workloads); nothing to create or remove.
                image = a.medium
            else:
                image = shared = os.path.join(a.medium, f"ab-bench-engines-{os.getpid()}.img")
                if allocate:
                    print(f"writing {LUN_SIZE >> 20} MiB of zeros to {shared}", flush=True)
                try:
                    make_image(shared, allocate)
                except OSError as e:
                    raise BenchError(f"cannot create {shared}: {e}") from None
            for e in engines:
                targets.append(Target(e, rtgt_tgtd, rtgt_tgtadm, IQN_RTGT, e, a.medium,
                                      a.bsoflags, allocate, shared_image=image))
        else:
            targets.append(Target("rtgt", rtgt_tgtd, rtgt_tgtadm, IQN_RTGT, a.bstype,
                                  a.medium, a.bsoflags, allocate))
            if with_tgt:
                targets.append(Target("tgt", a.tgt,
                                      os.path.join(os.path.dirname(a.tgt), "tgtadm"),
                                      IQN_TGT, "", a.medium, a.bsoflags, allocate))
        results = {t.name: {w[0]: [] for w in WORKLOADS} for t in targets}
        for rnd in range(rounds):
            if iperf:
                try:
                    loopback.append(loopback_tcp_mbps())
                except BenchError as e:
                    print(f"round {rnd + 1}: no loopback TCP measure: {e}", flush=True)
            # Each target takes each place in turn (with two: alternate), so
            # no target always runs after the same one.
            k = rnd % len(targets)
            order = targets[k:] + targets[:k]
            for w in WORKLOADS:
                for t in order:
                    results[t.name][w[0]].append(run_workload(t, w, a.quick))
            print(f"round {rnd + 1}/{rounds} done", flush=True)
    finally:
        for t in targets:
            t.stop()
        if shared:
            try:
                os.unlink(shared)
            except OSError:
                pass

    med = {t: {w: {k: statistics.median(r[k] for r in runs) for k in ("iops", "mbps", "cpu_us")}
               for w, runs in ws.items()} for t, ws in results.items()}
    cpus = os.cpu_count()
    where = f"LUNs on {a.medium}" + (f" ({fstype}, preallocated)" if allocate else "")
    flags = f"; bsoflags {a.bsoflags}" if a.bsoflags else ""
    if engines:
        print(f"\nmedians of {rounds} paired round(s); {cpus} CPUs; {where}{flags}; "
              f"rtgt engines {', '.join(engines)}")
        print_engines_table(med, [t.name for t in targets])
    else:
        print(f"\nmedians of {rounds} paired round(s); {cpus} CPUs; {where}; "
              f"rtgt bstype {a.bstype or 'default'}{flags}")
        print_ab_table(med)

    loop_med = statistics.median(loopback) if loopback else None
    pct = {}
    if loop_med:
        print(f"loopback TCP (iperf3, 1 stream): {loop_med:.0f} MB/s "
              f"(median of {len(loopback)})")
        for t in targets:
            pct[t.name] = {}
            for w in LOOPBACK_WORKLOADS:
                if w not in med[t.name]:
                    continue
                pct[t.name][w] = 100 * med[t.name][w]["mbps"] / loop_med
                print(f"{t.name} {w} = {pct[t.name][w]:.0f}% of loopback TCP")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": rounds, "medians": med, "runs": results,
                       "mode": "engines" if engines else "ab",
                       "medium": a.medium, "medium_fstype": fstype, "preallocated": allocate,
                       "bsoflags": a.bsoflags, "bstype": a.bstype, "engines": engines,
                       "lun_engines": {t.name: t.engine for t in targets},
                       "loopback_tcp": {"tool": "iperf3", "streams": 1,
                                        "seconds": IPERF_SECONDS, "mbps_median": loop_med,
                                        "mbps_runs": loopback} if iperf else None,
                       "pct_of_loopback_tcp": pct}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 round, short runs")
    ap.add_argument("--bstype", default="", help="rtgt's -E for its LUN (default: its default)")
    ap.add_argument("--rtgt-dir", default=os.path.join(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))), "target", "release"))
    ap.add_argument("--tgt", default="/usr/sbin/tgtd")
    ap.add_argument("--medium", default="/dev/shm",
                    help="directory for the LUN image files (default /dev/shm); "
                         "not tmpfs: images are written full of zeros first")
    ap.add_argument("--bsoflags", default="",
                    help="tgtadm --bsoflags for every LUN (e.g. direct, sync, sync:direct)")
    ap.add_argument("--engines",
                    help="comma list of rtgt engines (e.g. rdwr,aio,io_uring): one rtgt "
                         "daemon per engine, compared with the first, instead of rtgt vs tgt")
    ap.add_argument("--workloads",
                    help="comma list of workloads to run (default: all of "
                         + ", ".join(w[0] for w in WORKLOADS) + ")")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if a.workloads:
        wanted = a.workloads.split(",")
        unknown = [n for n in wanted if n not in {w[0] for w in WORKLOADS}]
        if unknown:
            ap.error(f"unknown workload(s): {', '.join(unknown)}")
        WORKLOADS[:] = [w for w in WORKLOADS if w[0] in wanted]
    # SIGTERM unwinds like Ctrl-C, so that the daemons are stopped and the files removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        run(a)
    except BenchError as e:
        sys.exit(f"ab-bench: {e}")
    except KeyboardInterrupt:
        sys.exit("ab-bench: interrupted (daemons stopped, images removed)")


if __name__ == "__main__":
    main()
