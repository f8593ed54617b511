#!/usr/bin/env python3
"""A command-line SCSI client on libiscsi (the initiator library of Debian's
libiscsi7, through ctypes), for commands libiscsi's own tools do not send:
PERSISTENT RESERVE IN/OUT, COMPARE AND WRITE, and commands whose sense data a
test checks. Used by the end-to-end tests.

Usage: libiscsi_client.py PORTAL IQN LUN INITIATOR_NAME COMMAND [ARGS...]
Commands (one session for all of them, run in order, separated by '--'):
  register KEY [aptpl]           PERSISTENT RESERVE OUT REGISTER (SPC-4 §6.16)
  reserve KEY TYPE               PERSISTENT RESERVE OUT RESERVE
  release KEY TYPE               PERSISTENT RESERVE OUT RELEASE
  read-keys                      prints "keys: K1 K2 ..." (hex)
  read-reservation               prints "reservation: KEY TYPE" or "reservation: none"
  write LBA BYTE [BLOCKS [fua]]  WRITE(10) of BLOCKS (default 1) 512-byte blocks filled
                                 with BYTE, with FUA when "fua" is given
  read LBA [BLOCKS]              READ(10) of BLOCKS (default 1) blocks; prints "read: B"
                                 when every byte read is B, else "read: mixed"
  fill LBA BYTE BLOCKS COUNT     up to COUNT WRITE(10)s of BLOCKS blocks filled with BYTE,
                                 from LBA on, stopping at the first that fails; prints
                                 the status of the last one and "filled: N" (blocks
                                 written with GOOD status)
  sync                           SYNCHRONIZE CACHE(10) of the whole LU
  sense                          prints "sense: KEY ASC ASCQ" (hex) of the previous
                                 command's CHECK CONDITION, or "sense: none" (or
                                 "sense: unparsed MESSAGE" if libiscsi's is unexpected)
  xcopy SRC DST N                EXTENDED COPY of N blocks from LBA SRC to LBA DST
  hold-sessions N SECONDS        log N more sessions in (initiator names NAME-0 ...),
                                 keep them idle for SECONDS, then leave
  caw-count LBA N                N rounds of: READ the block, COMPARE AND WRITE it from
                                 its counter value v to v+1; prints "caw: WINS MISSES"
Every command prints "status: S" (the SCSI status, 0 GOOD, 2 CHECK CONDITION,
24 RESERVATION CONFLICT). Exit status 0 unless the login failed.
"""
import ctypes
import re
import struct
import sys

lib = ctypes.CDLL("libiscsi.so.7")
c_void_p = ctypes.c_void_p
lib.iscsi_create_context.restype = c_void_p
lib.iscsi_create_context.argtypes = [ctypes.c_char_p]
lib.iscsi_set_targetname.argtypes = [c_void_p, ctypes.c_char_p]
lib.iscsi_set_session_type.argtypes = [c_void_p, ctypes.c_int]
lib.iscsi_full_connect_sync.argtypes = [c_void_p, ctypes.c_char_p, ctypes.c_int]
lib.iscsi_get_error.restype = ctypes.c_char_p
lib.iscsi_get_error.argtypes = [c_void_p]
lib.iscsi_logout_sync.argtypes = [c_void_p]
lib.iscsi_destroy_context.argtypes = [c_void_p]
lib.scsi_free_scsi_task.argtypes = [c_void_p]
lib.scsi_datain_unmarshall.restype = c_void_p
lib.scsi_datain_unmarshall.argtypes = [c_void_p]
lib.iscsi_persistent_reserve_out_sync.restype = c_void_p
lib.iscsi_persistent_reserve_out_sync.argtypes = [
    c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, c_void_p]
lib.iscsi_persistent_reserve_in_sync.restype = c_void_p
lib.iscsi_persistent_reserve_in_sync.argtypes = [
    c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
RW_ARGS = [c_void_p, ctypes.c_int, ctypes.c_uint32, c_void_p, ctypes.c_uint32,
           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
           ctypes.c_int]
for name in ("iscsi_write10_sync", "iscsi_compareandwrite_sync"):
    getattr(lib, name).restype = c_void_p
    getattr(lib, name).argtypes = RW_ARGS
lib.scsi_cdb_read10.restype = c_void_p
lib.scsi_cdb_read10.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.scsi_task_add_data_in_buffer.argtypes = [c_void_p, ctypes.c_int, c_void_p]
lib.scsi_cdb_inquiry.restype = c_void_p
lib.scsi_cdb_inquiry.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.scsi_create_task.restype = c_void_p
lib.scsi_create_task.argtypes = [ctypes.c_int, c_void_p, ctypes.c_int, ctypes.c_int]
lib.iscsi_scsi_command_sync.restype = c_void_p
lib.iscsi_scsi_command_sync.argtypes = [c_void_p, ctypes.c_int, c_void_p, c_void_p]
lib.iscsi_synchronizecache10_sync.restype = c_void_p
lib.iscsi_synchronizecache10_sync.argtypes = [
    c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]

ISCSI_SESSION_NORMAL = 2
SCSI_XFER_WRITE = 2


class IscsiData(ctypes.Structure):
    # struct iscsi_data (iscsi.h)
    _fields_ = [("size", ctypes.c_size_t), ("data", ctypes.c_void_p)]
BLOCK = 512


class ProutBasic(ctypes.Structure):
    # struct scsi_persistent_reserve_out_basic (scsi-lowlevel.h)
    _fields_ = [("reservation_key", ctypes.c_uint64),
                ("service_action_reservation_key", ctypes.c_uint64),
                ("spec_i_pt", ctypes.c_uint8),
                ("all_tg_pt", ctypes.c_uint8),
                ("aptpl", ctypes.c_uint8)]


SCSI_STATUS_CHECK_CONDITION = 2
# libiscsi renders the sense of a CHECK CONDITION into the context's error
# string as "SENSE KEY:NAME(key) ASCQ:NAME(0xAASS)" (iscsi_scsi_response()).
# (NAME may be "(null)" for codes libiscsi has no name for.)
SENSE_RE = re.compile(r"SENSE KEY:.*?\((\d+)\) ASCQ:.*\(0x([0-9a-fA-F]{4})\)")
# What "sense" prints about the previous command.
last_sense = "none"


def status(task):
    # struct scsi_task starts with `int status`.
    if not task:
        return -1
    return ctypes.c_int.from_address(task).value


def report(ctx, s):
    """Prints a command's status and keeps its sense for a following "sense"."""
    global last_sense
    last_sense = "none"
    if s == SCSI_STATUS_CHECK_CONDITION:
        error = lib.iscsi_get_error(ctx).decode(errors="replace")
        m = SENSE_RE.search(error)
        if m:
            key, asc_ascq = int(m.group(1)), int(m.group(2), 16)
            last_sense = f"{key:02x} {asc_ascq >> 8:02x} {asc_ascq & 0xFF:02x}"
        else:
            last_sense = "unparsed " + error
    print("status:", s)


def read_block(ctx, lun, lba, blocks=1):
    """READ(10) of `blocks` blocks into our own buffer; (status, bytes)."""
    size = blocks * BLOCK
    buf = ctypes.create_string_buffer(size)
    task = lib.scsi_cdb_read10(lba, size, BLOCK, 0, 0, 0, 0, 0)
    lib.scsi_task_add_data_in_buffer(task, size, buf)
    done = lib.iscsi_scsi_command_sync(ctx, lun, task, None)
    s = status(done) if done else -1
    data = buf.raw
    lib.scsi_free_scsi_task(task)
    return s, data


def write_blocks(ctx, lun, lba, byte, blocks, fua=0):
    """WRITE(10) of `blocks` blocks filled with `byte`; the status."""
    size = blocks * BLOCK
    buf = ctypes.create_string_buffer(bytes([byte]) * size, size)
    t = lib.iscsi_write10_sync(ctx, lun, lba, buf, size, BLOCK, 0, 0, fua, 0, 0)
    s = status(t)
    if t:
        lib.scsi_free_scsi_task(t)
    return s


def naa_of(ctx, lun):
    """The NAA designator of the LU's Device Identification VPD page (0x83)."""
    buf = ctypes.create_string_buffer(255)
    task = lib.scsi_cdb_inquiry(1, 0x83, 255)
    lib.scsi_task_add_data_in_buffer(task, 255, buf)
    done = lib.iscsi_scsi_command_sync(ctx, lun, task, None)
    page = buf.raw
    lib.scsi_free_scsi_task(task)
    if not done:
        return None
    at, end = 4, 4 + int.from_bytes(page[2:4], "big")
    while at + 4 <= end:
        dtype, dlen = page[at + 1] & 0x0F, page[at + 3]
        if dtype == 3 and dlen == 8:
            return page[at + 4:at + 12]
        at += 4 + dlen
    return None


def extended_copy(ctx, lun, src, dst, blocks):
    """EXTENDED COPY (LID1, SPC-4 §6.4) of `blocks` blocks from LBA `src` to LBA
    `dst` of this LU: one identification target descriptor naming the LU (used as
    source and destination) and one block-to-block segment descriptor."""
    naa = naa_of(ctx, lun)
    if naa is None:
        return -1
    tgt = bytearray(32)
    tgt[0] = 0xE4  # identification descriptor target descriptor
    tgt[4], tgt[5], tgt[7] = 0x01, 0x03, 8  # binary, NAA, 8 bytes
    tgt[8:16] = naa
    tgt[29:32] = BLOCK.to_bytes(3, "big")
    seg = bytearray(28)
    seg[0] = 0x02  # block device to block device
    seg[2:4] = (24).to_bytes(2, "big")
    seg[4:6] = (0).to_bytes(2, "big")
    seg[6:8] = (0).to_bytes(2, "big")
    seg[10:12] = blocks.to_bytes(2, "big")
    seg[12:20] = src.to_bytes(8, "big")
    seg[20:28] = dst.to_bytes(8, "big")
    hdr = bytearray(16)
    hdr[1] = 0x18  # LIST ID USAGE 11b: no list identifier
    hdr[2:4] = len(tgt).to_bytes(2, "big")
    hdr[8:12] = len(seg).to_bytes(4, "big")
    param = bytes(hdr + tgt + seg)
    cdb = bytearray(16)
    cdb[0] = 0x83
    cdb[10:14] = len(param).to_bytes(4, "big")
    cdb_buf = ctypes.create_string_buffer(bytes(cdb), 16)
    data_buf = ctypes.create_string_buffer(param, len(param))
    data = IscsiData(len(param), ctypes.cast(data_buf, c_void_p))
    task = lib.scsi_create_task(16, cdb_buf, SCSI_XFER_WRITE, len(param))
    done = lib.iscsi_scsi_command_sync(ctx, lun, task, ctypes.byref(data))
    s = status(done) if done else -1
    lib.scsi_free_scsi_task(task)
    return s


def prout(ctx, lun, sa, key, sa_key=0, pr_type=0, aptpl=0):
    p = ProutBasic(key, sa_key, 0, 0, aptpl)
    t = lib.iscsi_persistent_reserve_out_sync(ctx, lun, sa, 0, pr_type, ctypes.byref(p))
    s = status(t)
    if t:
        lib.scsi_free_scsi_task(t)
    return s


def main():
    portal, iqn, lun, initiator = sys.argv[1:5]
    lun = int(lun)
    ctx = lib.iscsi_create_context(initiator.encode())
    lib.iscsi_set_targetname(ctx, iqn.encode())
    lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
    if lib.iscsi_full_connect_sync(ctx, portal.encode(), lun) != 0:
        print("login failed:", lib.iscsi_get_error(ctx).decode(), flush=True)
        sys.exit(1)
    # Clear the POWER ON / RESET unit attention of the new I_T nexus.
    for _ in range(4):
        if read_block(ctx, lun, 0)[0] in (0, 24):
            break

    commands, cur = [], []
    for a in sys.argv[5:]:
        if a == "--":
            commands.append(cur)
            cur = []
        else:
            cur.append(a)
    commands.append(cur)

    for cmd in commands:
        op, args = cmd[0], cmd[1:]
        if op == "register":
            aptpl = 1 if len(args) > 1 and args[1] == "aptpl" else 0
            report(ctx, prout(ctx, lun, 0, 0, int(args[0], 16), aptpl=aptpl))
        elif op == "reserve":
            report(ctx, prout(ctx, lun, 1, int(args[0], 16), pr_type=int(args[1])))
        elif op == "release":
            report(ctx, prout(ctx, lun, 2, int(args[0], 16), pr_type=int(args[1])))
        elif op in ("read-keys", "read-reservation"):
            sa = 0 if op == "read-keys" else 1
            t = lib.iscsi_persistent_reserve_in_sync(ctx, lun, sa, 8192)
            s = status(t)
            report(ctx, s)
            if s == 0:
                p = lib.scsi_datain_unmarshall(t)
                if op == "read-keys":
                    # struct scsi_persistent_reserve_in_read_keys {uint32 prgeneration;
                    # uint32 additional_length; int num_keys; uint64 keys[];}
                    _gen, _len, n = struct.unpack("<IIi", ctypes.string_at(p, 12))
                    keys = struct.unpack(f"<{n}Q", ctypes.string_at(p + 16, 8 * n)) if n else ()
                    print("keys:", " ".join(f"{k:x}" for k in keys))
                else:
                    # struct scsi_persistent_reserve_in_read_reservation {uint32
                    # prgeneration; uint32 additional_length; int reserved; uint64
                    # reservation_key; uint8 pr_scope; uint8 pr_type;}
                    _gen, _len, reserved = struct.unpack("<IIi", ctypes.string_at(p, 12))
                    if not reserved:
                        print("reservation: none")
                    else:
                        key = struct.unpack("<Q", ctypes.string_at(p + 16, 8))[0]
                        _scope, pr_type = ctypes.string_at(p + 24, 2)
                        print(f"reservation: {key:x} {pr_type}")
            if t:
                lib.scsi_free_scsi_task(t)
        elif op == "write":
            blocks = int(args[2]) if len(args) > 2 else 1
            fua = 1 if len(args) > 3 and args[3] == "fua" else 0
            report(ctx, write_blocks(ctx, lun, int(args[0]), int(args[1], 16), blocks, fua))
        elif op == "read":
            blocks = int(args[1]) if len(args) > 1 else 1
            s, data = read_block(ctx, lun, int(args[0]), blocks)
            report(ctx, s)
            if s == 0:
                uniform = data.count(data[0]) == len(data)
                print("read:", f"{data[0]:x}" if uniform else "mixed")
        elif op == "fill":
            lba, byte, blocks, count = int(args[0]), int(args[1], 16), int(args[2]), int(args[3])
            filled, s = 0, 0
            for _ in range(count):
                s = write_blocks(ctx, lun, lba + filled, byte, blocks)
                if s != 0:
                    break
                filled += blocks
            report(ctx, s)
            print("filled:", filled)
        elif op == "sync":
            t = lib.iscsi_synchronizecache10_sync(ctx, lun, 0, 0, 0, 0)
            report(ctx, status(t))
            if t:
                lib.scsi_free_scsi_task(t)
        elif op == "sense":
            print("sense:", last_sense)
        elif op == "caw-count":
            lba, rounds = int(args[0]), int(args[1])
            wins = misses = 0
            for _ in range(rounds):
                s, cur_block = read_block(ctx, lun, lba)
                if s != 0:
                    print("status:", s)
                    break
                v = struct.unpack("<Q", cur_block[:8])[0]
                new = struct.pack("<Q", v + 1) + cur_block[8:]
                buf = ctypes.create_string_buffer(cur_block + new, 2 * BLOCK)
                t = lib.iscsi_compareandwrite_sync(ctx, lun, lba, buf, 2 * BLOCK, BLOCK,
                                                   0, 0, 0, 0, 0)
                s = status(t)
                if t:
                    lib.scsi_free_scsi_task(t)
                if s == 0:
                    wins += 1
                elif s == 2:
                    misses += 1
                else:
                    print("status:", s)
                    break
            print("status: 0")
            print(f"caw: {wins} {misses}")
        elif op == "hold-sessions":
            import resource
            import time
            n, seconds = int(args[0]), float(args[1])
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 64)), hard))
            held = []
            for i in range(n):
                c = lib.iscsi_create_context(f"{initiator}-{i}".encode())
                lib.iscsi_set_targetname(c, iqn.encode())
                lib.iscsi_set_session_type(c, ISCSI_SESSION_NORMAL)
                if lib.iscsi_full_connect_sync(c, portal.encode(), lun) != 0:
                    print("login failed:", lib.iscsi_get_error(c).decode(), flush=True)
                    sys.exit(1)
                held.append(c)
            print("status: 0")
            print(f"sessions: {len(held)}", flush=True)
            time.sleep(seconds)
            for c in held:
                lib.iscsi_logout_sync(c)
                lib.iscsi_destroy_context(c)
        elif op == "xcopy":
            report(ctx, extended_copy(ctx, lun, int(args[0]), int(args[1]), int(args[2])))
        else:
            print("unknown command", op)
            sys.exit(2)
        sys.stdout.flush()
    lib.iscsi_logout_sync(ctx)
    lib.iscsi_destroy_context(ctx)


if __name__ == "__main__":
    main()
