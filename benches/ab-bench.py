#!/usr/bin/env python3
"""rtgt's own A/B benchmark: rtgt's tgtd against Debian's tgtd, same medium.

Starts rtgt's tgtd and (when installed) Debian's /usr/sbin/tgtd, each with one
LUN on its own file in /dev/shm (tmpfs: the medium is the same and never the
bottleneck), and drives both with real userspace initiators over loopback:
`qemu-img bench` (QEMU's iSCSI driver, libiscsi underneath) for the
sequential workloads and `iscsi-perf` (libiscsi) for random reads. For every
workload it reports IOPS, MB/s and the target's CPU time per I/O in
microseconds (all of the daemon's threads, from /proc/PID/task/*/schedstat):
on a machine where initiator and target share the cores, CPU per I/O is what
tells target efficiency apart.

Rounds are paired: each round runs every workload on both targets, in
alternating order, and the table shows the median of the rounds and the
ratios rtgt/tgt of the medians (IOPS: higher is better; CPU: lower is better).

Usage:
  benches/ab-bench.py [--rounds 5] [--quick] [--bstype rdwr] [--json OUT]
                      [--rtgt-dir target/release] [--tgt /usr/sbin/tgtd]
Run it as root (both daemons put their management socket in /var/run/tgtd),
after `cargo build --release`. Debian packages: libiscsi-bin, qemu-utils,
qemu-block-extra, tgt (optional: without it only rtgt is measured).
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

IQN_RTGT = "iqn.2026-11.org.rtgt:bench"
IQN_TGT = "iqn.2026-11.org.rtgt:bench-tgt"
LUN_SIZE = 1 << 30

# name, kind, block size, queue depth, write, I/Os per run (full mode)
WORKLOADS = [
    ("write-4k-qd1", "qemu", "4k", 1, True, 20000),
    ("read-4k-qd1", "qemu", "4k", 1, False, 20000),
    ("write-4k-qd32", "qemu", "4k", 32, True, 100000),
    ("read-4k-qd32", "qemu", "4k", 32, False, 100000),
    ("write-128k-qd8", "qemu", "128k", 8, True, 8000),
    ("read-128k-qd8", "qemu", "128k", 8, False, 8000),
    ("randread-4k-qd32", "perf", "4k", 32, False, 5),  # iscsi-perf: seconds
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_control_port():
    for n in range(40, 200):
        if not os.path.exists(f"/var/run/tgtd/socket.{n}"):
            return n
    sys.exit("no free tgtd control port under /var/run/tgtd")


def cpu_ns(pid):
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class Target:
    """One daemon with one LUN on a tmpfs file."""

    def __init__(self, name, tgtd, tgtadm, iqn, bstype):
        self.name, self.iqn = name, iqn
        self.port, self.control = free_port(), free_control_port()
        self.image = f"/dev/shm/ab-bench-{name}-{os.getpid()}.img"
        with open(self.image, "wb") as f:
            f.truncate(LUN_SIZE)
        self.log = open(f"/tmp/ab-bench-{name}.log", "w")
        self.proc = subprocess.Popen(
            [tgtd, "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.tgtadm = tgtadm
        deadline = time.time() + 10
        while not self._ready():
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                sys.exit(f"{name}: tgtd did not start (see {self.log.name})")
            time.sleep(0.1)
        lu = ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
              "-b", self.image]
        if bstype:
            lu += ["-E", bstype]
        for args in (["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn], lu,
                     ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]):
            self.adm(args)

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
            self.stop()
            sys.exit(f"{self.name}: tgtadm {' '.join(args)}: {r.stdout}{r.stderr}")

    @property
    def url(self):
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/1"

    def stop(self):
        if self.proc.poll() is None:
            # Debian's tgtd ignores SIGTERM: it is stopped with SIGKILL.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.image)
        except OSError:
            pass


def run_workload(target, w, quick):
    name, kind, size, depth, write, amount = w
    if quick:
        amount = max(1, amount // 5) if kind == "qemu" else 2
    before = cpu_ns(target.proc.pid)
    if kind == "qemu":
        cmd = ["qemu-img", "bench", "-f", "raw", "-c", str(amount), "-d", str(depth),
               "-s", size] + (["-w"] if write else []) + [target.url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"{target.name} {name}: {r.stdout[-300:]}{r.stderr[-300:]}")
        seconds, ios = float(m.group(1)), amount
    else:
        blocks = {"4k": 8}[size]
        cmd = ["iscsi-perf", "-m", str(depth), "-b", str(blocks), "-r", "-t", str(amount),
               target.url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=amount + 60)
        m = re.findall(r"iops average (\d+)", r.stdout)
        if not m:
            raise RuntimeError(f"{target.name} {name}: {r.stdout[-300:]}{r.stderr[-300:]}")
        iops = int(m[-1])
        seconds, ios = float(amount), iops * amount
    used = cpu_ns(target.proc.pid) - before
    bytes_per_io = {"4k": 4096, "128k": 131072}[size]
    iops = ios / seconds
    return {"iops": iops, "mbps": iops * bytes_per_io / 1e6, "cpu_us": used / 1e3 / ios}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 round, short runs")
    ap.add_argument("--bstype", default="", help="rtgt's -E for its LUN (default: its default)")
    ap.add_argument("--rtgt-dir", default=os.path.join(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))), "target", "release"))
    ap.add_argument("--tgt", default="/usr/sbin/tgtd")
    ap.add_argument("--json")
    a = ap.parse_args()
    rounds = 1 if a.quick else a.rounds
    for tool in ("qemu-img", "iscsi-perf"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (Debian: qemu-utils qemu-block-extra libiscsi-bin)")

    targets = [Target("rtgt", os.path.join(a.rtgt_dir, "tgtd"),
                      os.path.join(a.rtgt_dir, "tgtadm"), IQN_RTGT, a.bstype)]
    if os.access(a.tgt, os.X_OK):
        targets.append(Target("tgt", a.tgt, os.path.join(os.path.dirname(a.tgt), "tgtadm"),
                              IQN_TGT, ""))
    else:
        print(f"{a.tgt} not installed: measuring rtgt only")
    results = {t.name: {w[0]: [] for w in WORKLOADS} for t in targets}
    try:
        for rnd in range(rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for w in WORKLOADS:
                for t in order:
                    results[t.name][w[0]].append(run_workload(t, w, a.quick))
            print(f"round {rnd + 1}/{rounds} done", flush=True)
    finally:
        for t in targets:
            t.stop()

    med = {t: {w: {k: statistics.median(r[k] for r in runs) for k in ("iops", "mbps", "cpu_us")}
               for w, runs in ws.items()} for t, ws in results.items()}
    cpus = os.cpu_count()
    print(f"\nmedians of {rounds} paired round(s); {cpus} CPUs; LUNs on /dev/shm; "
          f"rtgt bstype {a.bstype or 'default'}")
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
                     f" {r['iops'] / b['iops']:7.2f} {r['cpu_us'] / b['cpu_us']:6.2f}")
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": rounds, "medians": med, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
