//! The shared store suite: one function every engine must pass (the
//! firecracker / cloud-hypervisor pattern, DESIGN.md "Style"). A new engine
//! adds one `#[test]` that calls [`store_suite`] with its opener.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::ops::mismatch;
use crate::{
    completion_channel, open_store, AlignedBuf, BackingError, BackingStore, BufPool,
    CompletionReceiver, CompletionSender, Extent, IoCompletion, IoError, IoOp, IoRequest,
    OpenOptions, StoreKind, NULL_STORE_SIZE,
};

const WAIT: Duration = Duration::from_secs(30);

type Opener<'a> = &'a dyn Fn(&OpenOptions) -> Result<Arc<dyn BackingStore>, BackingError>;

/// Block until the receiver's eventfd is readable, then drain it.
fn wait_drain(rx: &mut CompletionReceiver, out: &mut Vec<IoCompletion>, deadline: Instant) {
    // As a reactor does before it polls: batched submissions go in now.
    rx.flush_submissions();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for completions");
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {
                rx.drain(out);
                return;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Wait for exactly `n` completions.
fn collect(rx: &mut CompletionReceiver, n: usize) -> Vec<IoCompletion> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        wait_drain(rx, &mut out, deadline);
    }
    assert_eq!(out.len(), n, "more completions than requests");
    out
}

struct Io {
    store: Arc<dyn BackingStore>,
    tx: CompletionSender,
    rx: CompletionReceiver,
    next_tag: u64,
}

impl Io {
    fn new(store: Arc<dyn BackingStore>) -> Io {
        let (tx, rx) = completion_channel().expect("eventfd");
        Io {
            store,
            tx,
            rx,
            next_tag: 1,
        }
    }

    fn run(&mut self, op: IoOp, offset: u64, buf: AlignedBuf, fua: bool) -> IoCompletion {
        self.run_req(IoRequest::new(0, op, offset, buf).with_fua(fua))
    }

    /// Submit `req` under a fresh tag and wait for its completion.
    fn run_req(&mut self, mut req: IoRequest) -> IoCompletion {
        let tag = self.next_tag;
        self.next_tag += 1;
        req.tag = tag;
        let op = req.op;
        self.store.submit(req, &self.tx);
        let mut done = collect(&mut self.rx, 1);
        let c = done.pop().expect("one completion");
        assert_eq!(c.tag, tag);
        assert_eq!(c.op, op);
        c
    }

    /// One of the SBC-3 ops: `data` is the buffer, `len` the bytes covered.
    fn op(&mut self, op: IoOp, offset: u64, data: &[u8], len: u64) -> Result<usize, IoError> {
        self.run_req(IoRequest::new(0, op, offset, buf_from(data)).with_len(len))
            .result
    }

    /// Extents from `offset` over `len` bytes, room for `records`.
    fn extents(&mut self, offset: u64, len: u64, records: usize) -> Vec<Extent> {
        let mut buf = AlignedBuf::with_capacity(records * Extent::RECORD_LEN);
        buf.set_len(records * Extent::RECORD_LEN);
        let c = self.run_req(IoRequest::new(0, IoOp::Extents, offset, buf).with_len(len));
        let n = c.result.expect("extents");
        assert_eq!(n % Extent::RECORD_LEN, 0, "whole records");
        assert!(n <= records * Extent::RECORD_LEN);
        Extent::parse(&c.buf[..n]).collect()
    }

    /// Copy `len` bytes from `source` at `from` into this store at `to`.
    fn copy(
        &mut self,
        source: &Arc<dyn BackingStore>,
        from: u64,
        to: u64,
        len: u64,
    ) -> Result<usize, IoError> {
        let req = IoRequest::new(0, IoOp::Copy, to, AlignedBuf::with_capacity(0))
            .with_len(len)
            .with_source(Arc::clone(source), from);
        self.run_req(req).result
    }

    fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<usize, IoError> {
        let mut buf = AlignedBuf::with_capacity(data.len());
        buf.set_len(data.len());
        buf.copy_from_slice(data);
        self.run(IoOp::Write, offset, buf, fua).result
    }

    /// Read `len` bytes into a buffer full of stale 0xEE.
    fn read(&mut self, offset: u64, len: usize) -> (Result<usize, IoError>, AlignedBuf) {
        let mut buf = AlignedBuf::with_capacity(len);
        buf.set_len(buf.capacity());
        buf.fill(0xEE);
        buf.set_len(len);
        let c = self.run(IoOp::Read, offset, buf, false);
        (c.result, c.buf)
    }

    fn flush(&mut self) -> Result<usize, IoError> {
        self.run(IoOp::Flush, 0, AlignedBuf::with_capacity(0), false)
            .result
    }
}

fn buf_from(data: &[u8]) -> AlignedBuf {
    let mut buf = AlignedBuf::with_capacity(data.len());
    buf.set_len(data.len());
    buf.copy_from_slice(data);
    buf
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The suite. `opts` describes a store of at least 2 MiB that may be written;
/// `persistent` says whether reads return what was written (false for null,
/// which reads zeros); `holes` says that `opts.path` is a file on a file
/// system that punches holes and reports them through `SEEK_HOLE`, so Unmap
/// must show in Extents and in st_blocks.
pub(crate) fn store_suite(open: Opener<'_>, opts: &OpenOptions, persistent: bool, holes: bool) {
    let store = open(opts).expect("open store");
    let size = store.size();
    assert!(
        size >= REGION as u64,
        "suite needs a store of at least 2 MiB"
    );
    assert!(!store.readonly());
    let mut io = Io::new(Arc::clone(&store));

    // Write then read back across offsets, with and without FUA, then Flush.
    let cases: [(u64, usize, bool); 6] = [
        (0, 4096, false),
        (4096, 8192, true),
        (12288 + 3 * 512, 512, false),
        (65536, 65536 + 4096, true),
        (size - 8192, 8192, false),
        (200_000, 1000, true), // neither block nor page aligned
    ];
    for (i, &(offset, len, fua)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        assert_eq!(
            io.write(offset, &data, fua),
            Ok(len),
            "write {offset}+{len}"
        );
    }
    assert_eq!(io.flush(), Ok(0));
    // WRITE ATOMIC lands like a write (its exclusion is CompareAndWrite's lock).
    let atomic = pattern(99, 8192);
    assert_eq!(io.op(IoOp::WriteAtomic, 1 << 20, &atomic, 8192), Ok(8192));
    let (res, back) = io.read(1 << 20, 8192);
    assert_eq!(res, Ok(8192));
    assert!(!persistent || back[..] == atomic[..], "WRITE ATOMIC data");
    for (i, &(offset, len, _)) in cases.iter().enumerate() {
        let (res, buf) = io.read(offset, len);
        assert_eq!(res, Ok(len), "read {offset}+{len}");
        assert_eq!(buf.len(), len);
        if persistent {
            assert!(
                buf[..] == pattern(i as u64, len)[..],
                "data at {offset}+{len}"
            );
        } else {
            assert!(buf.iter().all(|&b| b == 0), "null reads zeros");
        }
    }

    // A read that runs past the end zero-fills (no stale pool data); one
    // wholly past the end is all zeros.
    let (res, buf) = io.read(size - 4096, 3 * 4096);
    assert_eq!(res, Ok(3 * 4096));
    if persistent {
        assert!(buf[..4096] == pattern(4, 8192)[4096..]);
    }
    assert!(
        buf[4096..].iter().all(|&b| b == 0),
        "past-end read zero-filled"
    );
    let (res, buf) = io.read(size + (1 << 20), 4096);
    assert_eq!(res, Ok(4096));
    assert!(buf.iter().all(|&b| b == 0));

    // Empty transfers are fine.
    assert_eq!(io.write(0, &[], false), Ok(0));
    assert_eq!(io.read(0, 0).0, Ok(0));

    // An offset the OS cannot address is an IoError, buffer handed back.
    let mut buf = AlignedBuf::with_capacity(4096);
    buf.set_len(4096);
    let addr = buf.as_ptr();
    let c = io.run(IoOp::Write, u64::MAX - 100, buf, false);
    if persistent {
        assert_eq!(c.result, Err(IoError::EINVAL));
    }
    assert_eq!(
        (c.buf.as_ptr(), c.buf.len()),
        (addr, 4096),
        "buffer comes back"
    );

    concurrent(&store, persistent);
    burst(&store, persistent);

    let holes = holes.then_some(opts.path.as_path());
    sbc_ops(&store, &mut io, persistent, holes);
    compare_and_write_race(&store, persistent);

    // close: idempotent; later requests still complete (with an error for
    // engines that really stop), exactly once, buffer handed back.
    store.close();
    store.close();
    let mut buf = AlignedBuf::with_capacity(4096);
    buf.set_len(512);
    let c = io.run(IoOp::Read, 0, buf, false);
    assert_eq!(c.buf.len(), 512);
    assert!(io.rx.is_empty());
    let c = io.run_req(IoRequest::new(0, IoOp::Unmap, 0, buf_from(&[1; 100])).with_len(4096));
    assert_eq!(c.buf[..], [1; 100][..], "buffer comes back");
    assert!(io.rx.is_empty());
    drop(io);
    drop(store);

    // A store opened read-only rejects writes with EROFS, reads still work.
    let ro = open(&OpenOptions {
        readonly: true,
        ..opts.clone()
    })
    .expect("open read-only");
    assert!(ro.readonly());
    assert_eq!(ro.size(), size);
    let mut io = Io::new(Arc::clone(&ro));
    let data = pattern(99, 4096);
    let mut buf = AlignedBuf::with_capacity(4096);
    buf.set_len(4096);
    buf.copy_from_slice(&data);
    let c = io.run(IoOp::Write, 0, buf, true);
    assert_eq!(c.result, Err(IoError::EROFS));
    assert!(c.buf[..] == data[..], "buffer comes back untouched");
    let (res, buf) = io.read(0, 4096);
    assert_eq!(res, Ok(4096));
    if persistent {
        assert!(buf[..] == pattern(0, 4096)[..]);
    }
    // Every op that writes is refused; Compare and Extents only read.
    let blk = pattern(98, 512);
    let null = open_store(StoreKind::Null, &OpenOptions::new("")).expect("null");
    for (op, data, len) in [
        (IoOp::Unmap, &[][..], 4096),
        (IoOp::WriteSame, &blk[..], 4096),
        (IoOp::OrWrite, &blk[..], 0),
        (IoOp::CompareAndWrite, &[0; 1024][..], 0),
    ] {
        assert_eq!(io.op(op, 4096, data, len), Err(IoError::EROFS), "{op:?}");
    }
    assert_eq!(io.copy(&null, 0, 4096, 4096), Err(IoError::EROFS));
    let ro_store: Arc<dyn BackingStore> = Arc::clone(&ro);
    assert_eq!(io.copy(&ro_store, 0, 8192, 4096), Err(IoError::EROFS));
    let expected = if persistent {
        mismatch(&pattern(0, 4096), &[0; 4096]).unwrap_or(4096)
    } else {
        4096
    };
    assert_eq!(io.op(IoOp::Compare, 0, &[0; 512], 4096), Ok(expected));
    let ext = io.extents(0, 4096, 4);
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 4096);
    ro.close();
}

/// Bytes at the start of every suite store that [`sbc_ops`] models.
const REGION: usize = 2 << 20;
/// The logical block size the SBC-3 op tests use.
const BLOCK: usize = 512;

/// Read `len` bytes at `offset` and compare them with the model.
#[track_caller]
fn check_model(io: &mut Io, model: &[u8], offset: usize, len: usize, what: &str) {
    let (res, buf) = io.read(offset as u64, len);
    assert_eq!(res, Ok(len), "{what}: read");
    if let Some(at) = mismatch(&buf, &model[offset..offset + len]) {
        panic!(
            "{what}: byte {} differs: store {:#04x}, model {:#04x}",
            offset + at,
            buf[at],
            model[offset + at]
        );
    }
}

/// Leading bytes of `model[offset..offset + len]` equal to `pat` repeated.
fn expect_compare(model: &[u8], offset: usize, pat: &[u8], len: usize) -> usize {
    (0..len)
        .find(|&i| model[offset + i] != pat[i % pat.len()])
        .unwrap_or(len)
}

fn st_blocks(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks()
}

fn mapped(len: usize) -> Extent {
    Extent {
        len: len as u64,
        mapped: true,
    }
}

fn hole(len: usize) -> Extent {
    Extent {
        len: len as u64,
        mapped: false,
    }
}

/// The SBC-3 ops beyond read/write/flush, against a model of the first
/// [`REGION`] bytes (all zeros, never updated, for a store that is not
/// `persistent`). Leaves the first 4 KiB alone.
fn sbc_ops(store: &Arc<dyn BackingStore>, io: &mut Io, persistent: bool, holes: Option<&Path>) {
    const B: usize = BLOCK;
    let size = store.size();
    let (res, buf) = io.read(0, REGION);
    assert_eq!(res, Ok(REGION));
    let mut model = buf.to_vec();
    if !persistent {
        assert!(model.iter().all(|&b| b == 0));
    }
    let write = |io: &mut Io, model: &mut [u8], offset: usize, data: &[u8]| {
        assert_eq!(io.write(offset as u64, data, false), Ok(data.len()));
        if persistent {
            model[offset..offset + data.len()].copy_from_slice(data);
        }
    };

    // Unmap (SBC-3 §4.7): data, hole, data; the hole reads zeros, the data
    // around it stays, and a hole-punching file system shows it.
    let (base, part) = (64 << 10, 64 << 10);
    write(io, &mut model, base, &pattern(100, 3 * part));
    assert_eq!(io.flush(), Ok(0));
    let blocks_before = holes.map(st_blocks);
    assert_eq!(
        io.op(IoOp::Unmap, (base + part) as u64, &[], part as u64),
        Ok(part)
    );
    if persistent {
        model[base + part..base + 2 * part].fill(0);
    }
    check_model(io, &model, base, 3 * part, "unmap");
    if let (Some(path), Some(before)) = (holes, blocks_before) {
        let after = st_blocks(path);
        assert!(
            after + (part / 512) as u64 <= before,
            "st_blocks {before} -> {after}: hole not punched"
        );
    }
    let ext = io.extents(base as u64, 3 * part as u64, 8);
    if holes.is_some() {
        assert_eq!(ext, [mapped(part), hole(part), mapped(part)]);
        // Only as many records as the buffer holds.
        let ext = io.extents(base as u64, 3 * part as u64, 2);
        assert_eq!(ext, [mapped(part), hole(part)]);
    } else {
        assert_eq!(ext, [mapped(3 * part)]);
    }
    // Unaligned: exactly those bytes read zeros.
    assert_eq!(io.op(IoOp::Unmap, (base + 100) as u64, &[], 1000), Ok(1000));
    if persistent {
        model[base + 100..base + 1100].fill(0);
    }
    check_model(io, &model, base, part, "unaligned unmap");
    assert_eq!(io.op(IoOp::Unmap, base as u64, &[], 0), Ok(0));

    // Extents: nothing at or past the end; clipped at the end of the store.
    assert_eq!(io.extents(size, 4096, 4), []);
    let ext = io.extents(size - 4096, 1 << 20, 4);
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 4096);
    assert!(ext.iter().all(|e| e.mapped), "written at the suite's start");

    // WriteSame (SBC-3 §5.42): the block lands on every block of the range
    // and nowhere else.
    let ws = 300 << 10;
    write(io, &mut model, ws, &pattern(102, 10 * B));
    let blk = pattern(101, B);
    assert_eq!(
        io.op(IoOp::WriteSame, (ws + B) as u64, &blk, 6 * B as u64),
        Ok(6 * B)
    );
    if persistent {
        for b in 1..7 {
            model[ws + b * B..ws + (b + 1) * B].copy_from_slice(&blk);
        }
    }
    check_model(io, &model, ws - B, 12 * B, "write same");
    // More than one chunk, with FUA; Compare (BYTCHK=3) sees it everywhere.
    let (big_at, big) = (400 << 10, (1 << 20) + 3 * 4096);
    let blk4k = pattern(103, 4096);
    let req = IoRequest::new(0, IoOp::WriteSame, big_at as u64, buf_from(&blk4k))
        .with_len(big as u64)
        .with_fua(true);
    assert_eq!(io.run_req(req).result, Ok(big));
    if persistent {
        for chunk in model[big_at..big_at + big].chunks_exact_mut(4096) {
            chunk.copy_from_slice(&blk4k);
        }
    }
    check_model(io, &model, big_at - 4096, big + 8192, "big write same");
    assert_eq!(
        io.op(IoOp::Compare, big_at as u64, &blk4k, big as u64),
        Ok(expect_compare(&model, big_at, &blk4k, big))
    );
    // Zeros over the hole: data again (WRITE SAME without UNMAP maps).
    assert_eq!(
        io.op(IoOp::WriteSame, (base + part) as u64, &[0; B], part as u64),
        Ok(part)
    );
    check_model(io, &model, base, 3 * part, "write same zeros");
    if holes.is_some() {
        assert_eq!(
            io.extents(base as u64, 3 * part as u64, 8),
            [mapped(3 * part)]
        );
    }
    assert_eq!(
        io.op(IoOp::WriteSame, ws as u64, &blk, 1000),
        Err(IoError::EINVAL)
    );
    assert_eq!(
        io.op(IoOp::WriteSame, ws as u64, &[], 512),
        Err(IoError::EINVAL)
    );
    check_model(io, &model, ws, 10 * B, "refused write same");

    // CompareAndWrite (SBC-3 §5.3): a match writes, a miscompare at byte 37
    // reports 37 and writes nothing.
    let cw = 1500 << 10;
    let old = pattern(104, 2 * B);
    write(io, &mut model, cw, &old);
    let new = pattern(105, 2 * B);
    let req = IoRequest::new(
        0,
        IoOp::CompareAndWrite,
        cw as u64,
        buf_from(&[&old[..], &new[..]].concat()),
    )
    .with_fua(true);
    let expected = mismatch(&model[cw..cw + 2 * B], &old).unwrap_or(2 * B);
    assert_eq!(io.run_req(req).result, Ok(expected));
    if persistent {
        assert_eq!(expected, 2 * B, "matched");
        model[cw..cw + 2 * B].copy_from_slice(&new);
    }
    check_model(io, &model, cw - B, 4 * B, "compare and write");
    let mut verify = model[cw..cw + 2 * B].to_vec();
    verify[37] ^= 0xFF;
    let cw_buf = [&verify[..], &pattern(106, 2 * B)[..]].concat();
    assert_eq!(io.op(IoOp::CompareAndWrite, cw as u64, &cw_buf, 0), Ok(37));
    check_model(io, &model, cw - B, 4 * B, "miscompare writes nothing");
    assert_eq!(
        io.op(IoOp::CompareAndWrite, cw as u64, &cw_buf[..2 * B - 1], 0),
        Err(IoError::EINVAL)
    );

    // Compare (SBC-3 §5.31, BYTCHK=3): one block against four, the third off
    // at byte 100.
    let cmp = 1200 << 10;
    let blk = pattern(107, B);
    let mut four = blk.repeat(4);
    four[2 * B + 100] ^= 0x01;
    write(io, &mut model, cmp, &four);
    let expected = expect_compare(&model, cmp, &blk, 4 * B);
    if persistent {
        assert_eq!(expected, 2 * B + 100);
    }
    assert_eq!(
        io.op(IoOp::Compare, cmp as u64, &blk, 4 * B as u64),
        Ok(expected)
    );
    assert_eq!(
        io.op(IoOp::Compare, cmp as u64, &blk, 2 * B as u64),
        Ok(expect_compare(&model, cmp, &blk, 2 * B))
    );
    assert_eq!(
        io.op(IoOp::Compare, cmp as u64, &four, 4 * B as u64),
        Ok(expect_compare(&model, cmp, &four, 4 * B))
    );
    assert_eq!(io.op(IoOp::Compare, cmp as u64, &blk, 0), Ok(0));
    assert_eq!(
        io.op(IoOp::Compare, cmp as u64, &blk, 700),
        Err(IoError::EINVAL)
    );

    // OrWrite (SBC-3 §5.9).
    let ow = 1300 << 10;
    write(io, &mut model, ow, &pattern(108, 2 * B));
    let mask = pattern(109, 2 * B);
    let req = IoRequest::new(0, IoOp::OrWrite, ow as u64, buf_from(&mask)).with_fua(true);
    assert_eq!(io.run_req(req).result, Ok(2 * B));
    if persistent {
        for (m, b) in model[ow..ow + 2 * B].iter_mut().zip(&mask) {
            *m |= b;
        }
    }
    check_model(io, &model, ow - B, 4 * B, "orwrite");

    // Copy (SPC-4 §6.4) within the store, overlapping, over more than one
    // chunk: first to a higher offset (backward), then back (forward).
    let (from, shift, len) = (4096, 8704, (1 << 20) + 3 * 4096 + 512);
    write(io, &mut model, from, &pattern(110, len + shift));
    let this = Arc::clone(store);
    assert_eq!(
        io.copy(&this, from as u64, (from + shift) as u64, len as u64),
        Ok(len)
    );
    if persistent {
        model.copy_within(from..from + len, from + shift);
    }
    check_model(io, &model, from, len + shift + 4096, "copy up");
    write(io, &mut model, from, &pattern(111, shift));
    assert_eq!(
        io.copy(&this, (from + shift) as u64, from as u64, len as u64),
        Ok(len)
    );
    if persistent {
        model.copy_within(from + shift..from + shift + len, from);
    }
    check_model(io, &model, from, len + shift + 4096, "copy down");
    // From another store (null: zeros).
    let null = open_store(StoreKind::Null, &OpenOptions::new("")).expect("null");
    assert_eq!(io.copy(&null, 12345, 70 << 10, 64 << 10), Ok(64 << 10));
    if persistent {
        model[70 << 10..134 << 10].fill(0);
    }
    check_model(io, &model, 64 << 10, 128 << 10, "copy from null");
    // Past the end of the destination or the source, or no source: EINVAL.
    assert_eq!(
        io.copy(&this, 4096, size - 4096, 8192),
        Err(IoError::EINVAL)
    );
    assert_eq!(
        io.copy(&this, size - 4096, 4096, 8192),
        Err(IoError::EINVAL)
    );
    assert_eq!(
        io.copy(&null, NULL_STORE_SIZE - 10, 4096, 4096),
        Err(IoError::EINVAL)
    );
    assert_eq!(io.op(IoOp::Copy, 4096, &[], 4096), Err(IoError::EINVAL));
    assert_eq!(io.copy(&this, 4096, 8192, 0), Ok(0));
    check_model(io, &model, 0, REGION, "whole region");

    // read_blocking: what Copy reads with; past the end zero-fills.
    let mut buf = vec![0xEE; 8192];
    assert_eq!(store.read_blocking(from as u64, &mut buf), Ok(8192));
    assert!(buf[..] == model[from..from + 8192]);
    buf.fill(0xEE);
    assert_eq!(store.read_blocking(size - 4096, &mut buf), Ok(8192));
    assert!(buf[4096..].iter().all(|&b| b == 0));
}

/// Two CompareAndWrites race from the same known value, 200 times: exactly
/// one wins each round and the loser sees the winner's data (SBC-3 §5.3:
/// the compare and the write are one atomic operation).
fn compare_and_write_race(store: &Arc<dyn BackingStore>, persistent: bool) {
    const B: usize = BLOCK;
    let at = 1800 << 10;
    let mut io = Io::new(Arc::clone(store));
    let mut racers = [Io::new(Arc::clone(store)), Io::new(Arc::clone(store))];
    for round in 0..200 {
        let mut old = pattern(1000 + round, B);
        old[0] = 0xF0;
        assert_eq!(io.write(at, &old, false), Ok(B));
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<(u8, Result<usize, IoError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = racers
                .iter_mut()
                .zip([1u8, 2])
                .map(|(racer, k)| {
                    let buf = [&old[..], &[k; B][..]].concat();
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        (k, racer.op(IoOp::CompareAndWrite, at, &buf, 0))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("racer"))
                .collect()
        });
        if persistent {
            let winners: Vec<u8> = results
                .iter()
                .filter(|(_, r)| *r == Ok(B))
                .map(|&(k, _)| k)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            // The loser compared against the winner's block: byte 0 differs.
            assert!(results.iter().any(|(_, r)| *r == Ok(0)), "{results:?}");
            let (res, buf) = io.read(at, B);
            assert_eq!(res, Ok(B));
            assert!(buf.iter().all(|&b| b == winners[0]), "round {round}");
        } else {
            // Reads zeros: both miscompare at byte 0.
            assert!(results.iter().all(|(_, r)| *r == Ok(0)), "{results:?}");
        }
    }
}

/// Many requests from several threads on one channel: every tag completes
/// exactly once, successfully, with its own buffer.
fn concurrent(store: &Arc<dyn BackingStore>, persistent: bool) {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 64;
    const LEN: usize = 4096;
    let (tx, mut rx) = completion_channel().expect("eventfd");
    let submitters: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(store);
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut pool = BufPool::new();
                for i in 0..PER_THREAD {
                    let tag = t * 1000 + i;
                    let mut buf = pool.get(LEN);
                    buf.copy_from_slice(&pattern(tag, LEN));
                    store.submit(
                        IoRequest::new(tag, IoOp::Write, slot(tag) * LEN as u64, buf)
                            .with_fua(i % 8 == 0),
                        &tx,
                    );
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().expect("submitter");
    }
    let done = collect(&mut rx, (THREADS * PER_THREAD) as usize);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for c in &done {
        assert_eq!(c.result, Ok(LEN), "tag {}", c.tag);
        assert_eq!(c.op, IoOp::Write);
        assert!(c.buf[..] == pattern(c.tag, LEN)[..], "own buffer back");
        *seen.entry(c.tag).or_default() += 1;
    }
    assert_eq!(seen.len(), (THREADS * PER_THREAD) as usize);
    assert!(seen.values().all(|&n| n == 1));

    // Read everything back, interleaved with flushes, from one submitter.
    let mut pool = BufPool::new();
    for c in done {
        pool.put(c.buf);
    }
    let mut expected = 0;
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let tag = t * 1000 + i;
            store.submit(
                IoRequest::new(tag, IoOp::Read, slot(tag) * LEN as u64, pool.get(LEN)),
                &tx,
            );
            expected += 1;
        }
        store.submit(
            IoRequest::new(u64::MAX - t, IoOp::Flush, 0, AlignedBuf::with_capacity(0)),
            &tx,
        );
        expected += 1;
    }
    let done = collect(&mut rx, expected);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for c in &done {
        *seen.entry(c.tag).or_default() += 1;
        match c.op {
            IoOp::Flush => assert_eq!(c.result, Ok(0)),
            IoOp::Read => {
                assert_eq!(c.result, Ok(LEN));
                if persistent {
                    assert!(c.buf[..] == pattern(c.tag, LEN)[..], "tag {}", c.tag);
                } else {
                    assert!(c.buf.iter().all(|&b| b == 0));
                }
            }
            other => panic!("no {other:?} submitted"),
        }
    }
    assert_eq!(seen.len(), expected);
    assert!(seen.values().all(|&n| n == 1));
}

/// More requests at once than a kernel queue holds (AIO: 128 per context),
/// from one submitter: every one completes within [`WAIT`], exactly once,
/// with its own buffer (same allocation, same tag), and the data lands.
fn burst(store: &Arc<dyn BackingStore>, persistent: bool) {
    const N: u64 = 600;
    const LEN: usize = 4096;
    let base = 1 << 20; // 600 × 4 KiB slots from 1 MiB: inside 4 MiB
    let (tx, mut rx) = completion_channel().expect("eventfd");
    let size = store.size();
    let n = N.min((size - base) / LEN as u64);
    assert!(n > 128, "suite store too small for the burst");
    let started = Instant::now();
    let mut addrs = HashMap::new();
    for tag in 0..n {
        let buf = buf_from(&pattern(5000 + tag, LEN));
        addrs.insert(tag, buf.as_ptr() as usize);
        let req = IoRequest::new(tag, IoOp::Write, base + tag * LEN as u64, buf);
        store.submit(req.with_fua(tag % 50 == 0), &tx);
    }
    let done = collect(&mut rx, n as usize);
    let mut seen = HashMap::new();
    for c in done {
        assert_eq!(c.result, Ok(LEN), "write {}", c.tag);
        assert_eq!(
            addrs.get(&c.tag),
            Some(&(c.buf.as_ptr() as usize)),
            "own buffer"
        );
        assert!(c.buf[..] == pattern(5000 + c.tag, LEN)[..], "own data");
        *seen.entry(c.tag).or_insert(0) += 1;
    }
    assert!(seen.len() == n as usize && seen.values().all(|&k| k == 1));
    addrs.clear();
    for tag in 0..n {
        let mut buf = AlignedBuf::with_capacity(LEN);
        buf.set_len(LEN);
        buf.fill(0xEE);
        addrs.insert(tag, buf.as_ptr() as usize);
        store.submit(
            IoRequest::new(tag, IoOp::Read, base + tag * LEN as u64, buf),
            &tx,
        );
    }
    let done = collect(&mut rx, n as usize);
    seen.clear();
    for c in done {
        assert_eq!(c.result, Ok(LEN), "read {}", c.tag);
        assert_eq!(
            addrs.get(&c.tag),
            Some(&(c.buf.as_ptr() as usize)),
            "own buffer"
        );
        if persistent {
            assert!(
                c.buf[..] == pattern(5000 + c.tag, LEN)[..],
                "data {}",
                c.tag
            );
        }
        *seen.entry(c.tag).or_insert(0) += 1;
    }
    assert!(seen.len() == n as usize && seen.values().all(|&k| k == 1));
    assert!(
        started.elapsed() < WAIT,
        "burst took {:?}",
        started.elapsed()
    );
}

/// The 4 KiB slot a tag of `concurrent` writes: all within the first MiB.
fn slot(tag: u64) -> u64 {
    (tag / 1000) * 64 + tag % 1000
}

fn sparse_file(dir: &Path, len: u64) -> PathBuf {
    let path = dir.join("lun0.img");
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(len).expect("set_len");
    path
}

#[test]
fn suite_rdwr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_file(dir.path(), 4 << 20);
    let opts = OpenOptions {
        worker_threads: 4,
        ..OpenOptions::new(&path)
    };
    store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true, true);
}

#[test]
fn suite_aio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_file(dir.path(), 4 << 20);
    let opts = OpenOptions {
        worker_threads: 4,
        ..OpenOptions::new(&path)
    };
    let store = open_store(StoreKind::Aio, &opts).expect("open");
    assert_eq!(store.name(), "aio");
    drop(store);
    store_suite(&|o| open_store(StoreKind::Aio, o), &opts, true, true);
}

#[test]
fn suite_io_uring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_file(dir.path(), 4 << 20);
    let opts = OpenOptions {
        worker_threads: 4,
        ..OpenOptions::new(&path)
    };
    let store = open_store(StoreKind::IoUring, &opts).expect("open");
    // "rdwr" where the kernel has io_uring disabled (the fallback).
    let enabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |v| v.trim() == "0");
    if enabled {
        assert_eq!(store.name(), "io_uring");
    } else {
        assert!(["io_uring", "rdwr"].contains(&store.name()));
    }
    drop(store);
    store_suite(&|o| open_store(StoreKind::IoUring, o), &opts, true, true);
}

#[test]
fn suite_engines_sync() {
    for kind in [StoreKind::Aio, StoreKind::IoUring] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sparse_file(dir.path(), 4 << 20);
        let opts = OpenOptions {
            sync: true,
            worker_threads: 1,
            ..OpenOptions::new(&path)
        };
        store_suite(&|o| open_store(kind, o), &opts, true, true);
    }
}

/// The engines on tmpfs (/dev/shm), where tgtd's end-to-end tests put LUNs.
#[test]
fn suite_engines_tmpfs() {
    for kind in [StoreKind::Aio, StoreKind::IoUring] {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipping tmpfs suite: no temp dir under /dev/shm");
            return;
        };
        let path = sparse_file(dir.path(), 4 << 20);
        let opts = OpenOptions {
            worker_threads: 3,
            ..OpenOptions::new(&path)
        };
        store_suite(&|o| open_store(kind, o), &opts, true, true);
    }
}

#[test]
fn suite_rdwr_sync_one_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_file(dir.path(), 2 << 20);
    let opts = OpenOptions {
        sync: true,
        worker_threads: 1,
        ..OpenOptions::new(&path)
    };
    store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true, true);
}

/// On tmpfs (/dev/shm), which punches holes page by page.
#[test]
fn suite_rdwr_tmpfs() {
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping tmpfs suite: no temp dir under /dev/shm: {e}");
            return;
        }
    };
    let path = sparse_file(dir.path(), 2 << 20);
    let opts = OpenOptions {
        worker_threads: 3,
        ..OpenOptions::new(&path)
    };
    store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true, true);
}

/// Extents (GET LBA STATUS) of a fresh sparse file with data, hole, data,
/// hole, on the temp dir's file system (ext4 here) and on tmpfs.
#[test]
fn rdwr_extents_layout() {
    let mut dirs = vec![tempfile::tempdir().expect("tempdir")];
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        dirs.push(shm);
    }
    for dir in &dirs {
        let path = sparse_file(dir.path(), 1 << 20);
        let opts = OpenOptions {
            worker_threads: 1,
            ..OpenOptions::new(&path)
        };
        let store = open_store(StoreKind::Rdwr, &opts).expect("open");
        let mut io = Io::new(Arc::clone(&store));
        assert_eq!(io.extents(0, 1 << 20, 8), [hole(1 << 20)], "{path:?}");
        assert_eq!(io.write(0, &pattern(1, 8192), false), Ok(8192));
        assert_eq!(io.write(512 << 10, &pattern(2, 8192), false), Ok(8192));
        let rest = (512 << 10) - 8192;
        assert_eq!(
            io.extents(0, 1 << 20, 8),
            [mapped(8192), hole(rest), mapped(8192), hole(rest)],
            "{path:?}"
        );
        // From inside the hole, limited by len.
        assert_eq!(
            io.extents(16384, 512 << 10, 8),
            [hole((512 << 10) - 16384), mapped(8192), hole(8192)],
            "{path:?}"
        );
    }
}

/// Copies between two rdwr stores in both directions while CompareAndWrite
/// hammers both: every request completes (no lock-order deadlock), and a
/// copy lands where it should.
#[test]
fn rdwr_copy_between_stores() {
    const SIZE: u64 = 2 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(SIZE))
            .expect("create");
        let opts = OpenOptions {
            worker_threads: 4,
            ..OpenOptions::new(&path)
        };
        open_store(StoreKind::Rdwr, &opts).expect("open")
    };
    let (a, b) = (open("a.img"), open("b.img"));
    let mut io_a = Io::new(Arc::clone(&a));
    let mut io_b = Io::new(Arc::clone(&b));
    let data = pattern(7, 1 << 20);
    assert_eq!(io_a.write(4096, &data, false), Ok(1 << 20));
    let len = (1 << 20) - 512;
    assert_eq!(io_b.copy(&a, 4096 + 512, 300 << 10, len as u64), Ok(len));
    let (res, buf) = io_b.read(300 << 10, len);
    assert_eq!(res, Ok(len));
    assert!(buf[..] == data[512..], "copied data");
    let (_, before) = io_b.read((300 << 10) - 4096, 4096);
    assert!(before.iter().all(|&x| x == 0), "nothing before the copy");

    let (tx, mut rx) = completion_channel().expect("eventfd");
    let mut expected = 0;
    for i in 0..16u64 {
        let (dst, src) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let req = IoRequest::new(i, IoOp::Copy, 1 << 20, AlignedBuf::with_capacity(0))
            .with_len(256 << 10)
            .with_source(Arc::clone(src), 0);
        dst.submit(req, &tx);
        for store in [&a, &b] {
            let buf = buf_from(&[0; 2 * BLOCK]);
            store.submit(IoRequest::new(1000 + i, IoOp::CompareAndWrite, 0, buf), &tx);
            expected += 1;
        }
        expected += 1;
    }
    let done = collect(&mut rx, expected);
    for c in done {
        match c.op {
            IoOp::Copy => assert_eq!(c.result, Ok(256 << 10), "copy {}", c.tag),
            IoOp::CompareAndWrite => assert!(c.result.is_ok(), "{:?}", c.result),
            other => panic!("{other:?}"),
        }
    }
}

/// A full file system reports ENOSPC through the completion: a WriteSame
/// larger than a 1 MiB tmpfs mounted for the test.
#[test]
fn rdwr_enospc() {
    struct Mount(tempfile::TempDir);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "rtgt-enospc"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipping ENOSPC test: mount tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipping ENOSPC test: cannot run mount: {e}");
            return;
        }
    }
    let mount = Mount(dir);
    let path = sparse_file(mount.0.path(), 4 << 20);
    let opts = OpenOptions {
        worker_threads: 1,
        ..OpenOptions::new(&path)
    };
    let store = open_store(StoreKind::Rdwr, &opts).expect("open");
    let mut io = Io::new(Arc::clone(&store));
    assert_eq!(
        io.op(IoOp::WriteSame, 0, &pattern(3, 4096), 3 << 20),
        Err(IoError::ENOSPC)
    );
    // Unmap gives the space back; then a small write fits again.
    assert_eq!(io.op(IoOp::Unmap, 0, &[], 4 << 20), Ok(4 << 20));
    assert_eq!(io.write(0, &pattern(4, 4096), false), Ok(4096));
    drop(io);
    drop(store);
    drop(mount);
}

#[test]
fn suite_null() {
    let opts = OpenOptions::new("");
    store_suite(&|o| open_store(StoreKind::Null, o), &opts, false, false);
}

/// O_DIRECT on a real file system (/var/tmp; tmpfs refuses O_DIRECT).
#[test]
fn suite_rdwr_direct() {
    suite_direct(StoreKind::Rdwr);
}

#[test]
fn suite_aio_direct() {
    suite_direct(StoreKind::Aio);
}

#[test]
fn suite_io_uring_direct() {
    suite_direct(StoreKind::IoUring);
}

fn suite_direct(kind: StoreKind) {
    let dir = match tempfile::tempdir_in("/var/tmp") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping O_DIRECT test: no temp dir under /var/tmp: {e}");
            return;
        }
    };
    let path = sparse_file(dir.path(), 4 << 20);
    let opts = OpenOptions {
        direct: true,
        worker_threads: 2,
        ..OpenOptions::new(&path)
    };
    match open_store(kind, &opts) {
        Err(BackingError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipping O_DIRECT test: file system under /var/tmp refuses O_DIRECT");
            return;
        }
        Err(e) => panic!("open O_DIRECT: {e}"),
        Ok(store) => drop(store),
    }
    store_suite(&|o| open_store(kind, o), &opts, true, true);

    // A file whose length is not a multiple of 512: the tail is read through
    // the buffered fallback and the rest zero-filled.
    let odd = dir.path().join("odd.img");
    let data = pattern(7, 4096 + 100);
    std::fs::write(&odd, &data).expect("write odd");
    let store = open_store(
        kind,
        &OpenOptions {
            path: odd,
            ..opts.clone()
        },
    )
    .expect("open odd");
    assert_eq!(store.size(), 4196);
    let mut io = Io::new(Arc::clone(&store));
    let (res, buf) = io.read(0, 8192);
    assert_eq!(res, Ok(8192));
    assert!(buf[..4196] == data[..]);
    assert!(buf[4196..].iter().all(|&b| b == 0));
}

/// Size of a block device comes from BLKGETSIZE64: open any block device on
/// the machine read-only and compare with sysfs.
#[test]
fn rdwr_block_device_size() {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        eprintln!("skipping block device test: no /sys/block");
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(sectors) = std::fs::read_to_string(entry.path().join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            continue;
        };
        if sectors == 0 {
            continue;
        }
        let dev = Path::new("/dev").join(&name);
        let opts = OpenOptions {
            readonly: true,
            worker_threads: 1,
            ..OpenOptions::new(&dev)
        };
        let Ok(store) = open_store(StoreKind::Rdwr, &opts) else {
            continue;
        };
        assert_eq!(store.size(), sectors * 512, "{}", dev.display());
        let mut io = Io::new(Arc::clone(&store));
        assert_eq!(io.read(0, 4096).0, Ok(4096));
        return;
    }
    eprintln!("skipping block device test: no readable block device");
}

/// Only regular files on tmpfs/ramfs count as memory media. A block device
/// node lives on devtmpfs, whose statfs(2) says tmpfs: such a device must
/// still be read through the kernel queue, never inline on the reactor or
/// by reference from its page cache.
#[test]
fn only_files_on_tmpfs_are_memory_media() {
    if let Ok(dir) = tempfile::tempdir_in("/dev/shm") {
        let path = sparse_file(dir.path(), 1 << 20);
        let store = crate::rdwr::RdwrStore::open(&OpenOptions::new(&path)).expect("open");
        assert!(store.in_memory(), "a file on /dev/shm");
        store.close();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_file(dir.path(), 1 << 20);
    let on_disk = crate::rdwr::RdwrStore::open(&OpenOptions::new(&path)).expect("open");
    let expect_disk = nix::sys::statfs::statfs(dir.path())
        .map(|fs| fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(true);
    assert_eq!(on_disk.in_memory(), !expect_disk, "{}", path.display());
    on_disk.close();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for entry in entries.flatten() {
        let dev = Path::new("/dev").join(entry.file_name());
        let opts = OpenOptions {
            readonly: true,
            worker_threads: 1,
            ..OpenOptions::new(&dev)
        };
        if let Ok(store) = crate::rdwr::RdwrStore::open(&opts) {
            assert!(!store.in_memory(), "{} is a block device", dev.display());
            store.close();
            return;
        }
    }
    eprintln!("no readable block device: only the file cases were checked");
}

#[test]
fn open_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    match open_store(StoreKind::Rdwr, &OpenOptions::new(&missing)) {
        Err(e @ BackingError::Open { .. }) => {
            assert!(e.to_string().starts_with("can't open "), "{e}");
        }
        other => panic!("expected Open error, got {:?}", other.map(|s| s.name())),
    }
    match open_store(StoreKind::Rdwr, &OpenOptions::new(dir.path())) {
        Err(e @ BackingError::NotFileOrBlockDevice(_)) => {
            assert!(e
                .to_string()
                .ends_with("is neither a regular file nor a block device"));
        }
        other => panic!(
            "expected NotFileOrBlockDevice, got {:?}",
            other.map(|s| s.name())
        ),
    }
    // Null ignores the path.
    let null = open_store(StoreKind::Null, &OpenOptions::new(&missing)).expect("null");
    assert_eq!(null.name(), "null");
    assert_eq!(null.size(), 1 << 40);
}

#[test]
fn store_kind_parse() {
    assert_eq!("rdwr".parse::<StoreKind>().ok(), Some(StoreKind::Rdwr));
    assert_eq!("null".parse::<StoreKind>().ok(), Some(StoreKind::Null));
    assert_eq!("aio".parse::<StoreKind>().ok(), Some(StoreKind::Aio));
    assert_eq!(
        "io_uring".parse::<StoreKind>().ok(),
        Some(StoreKind::IoUring)
    );
    for bad in ["", "RDWR", "aio ", "bsg", "io-uring", "uring"] {
        match bad.parse::<StoreKind>() {
            Err(BackingError::UnknownType(s)) => assert_eq!(s, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(StoreKind::Rdwr.to_string(), "rdwr");
    assert_eq!(StoreKind::Null.to_string(), "null");
    for kind in StoreKind::ALL {
        assert_eq!(kind.to_string().parse::<StoreKind>().ok(), Some(*kind));
    }
    assert_eq!(
        BackingError::UnknownType("x".into()).to_string(),
        "unknown backing store type: x"
    );
    assert_eq!(IoError(5).to_string(), "backing store I/O error: errno 5");
}

#[test]
fn rdwr_names_and_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sparse_file(dir.path(), 1 << 20);
    let store = open_store(
        StoreKind::Rdwr,
        &OpenOptions {
            worker_threads: 0, // the default, 16
            ..OpenOptions::new(&path)
        },
    )
    .expect("open");
    assert_eq!(store.name(), "rdwr");
    assert_eq!(store.size(), 1 << 20);
    // Dropping without close stops the workers too (close runs in Drop).
    drop(store);
}

#[test]
fn completion_channel_basics() {
    let (tx, mut rx) = completion_channel().expect("eventfd");
    let mut out = Vec::new();
    // Draining an empty channel is fine (EAGAIN ignored).
    rx.drain(&mut out);
    assert!(out.is_empty());
    for tag in 0..3 {
        tx.send(IoCompletion {
            file: None,
            tag,
            op: IoOp::Flush,
            buf: AlignedBuf::with_capacity(0),
            result: Ok(0),
        });
    }
    wait_drain(&mut rx, &mut out, Instant::now() + WAIT);
    assert_eq!(out.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![0, 1, 2]);
    // Counter was reset: not readable any more.
    let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
    assert_eq!(poll(&mut fds, PollTimeout::ZERO).expect("poll"), 0);
    // Sending after the receiver is gone does not block or panic.
    drop(rx);
    tx.send(IoCompletion {
        file: None,
        tag: 9,
        op: IoOp::Read,
        buf: AlignedBuf::with_capacity(0),
        result: Err(IoError::EIO),
    });
}

fn flush_completion(tag: u64) -> IoCompletion {
    IoCompletion {
        file: None,
        tag,
        op: IoOp::Flush,
        buf: AlignedBuf::with_capacity(0),
        result: Ok(0),
    }
}

fn readable(rx: &CompletionReceiver) -> bool {
    let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).expect("poll") > 0
}

/// Completions sent by the thread that drains the channel go without an
/// eventfd signal and are announced by `take_local`; other threads still
/// signal, also while the owner has some queued.
#[test]
fn completion_channel_local_sends() {
    let (tx, mut rx) = completion_channel().expect("eventfd");
    let mut out = Vec::new();
    rx.claim_current_thread();
    tx.send(flush_completion(1));
    assert!(!readable(&rx), "no signal for the drainer's own completion");
    assert!(rx.take_local());
    assert!(!rx.take_local(), "announced once");
    rx.drain_queued(&mut out);
    assert_eq!(out.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![1]);

    // Another thread's completion onto an empty queue signals.
    let other = tx.clone();
    std::thread::spawn(move || other.send(flush_completion(2)))
        .join()
        .expect("sender thread");
    assert!(readable(&rx));
    assert!(!rx.take_local());
    // One behind a local one rides with it: the drainer takes both before
    // it sleeps.
    tx.send(flush_completion(3));
    let other = tx.clone();
    std::thread::spawn(move || other.send(flush_completion(4)))
        .join()
        .expect("sender thread");
    assert!(rx.take_local());
    out.clear();
    rx.drain(&mut out);
    assert_eq!(out.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![2, 3, 4]);
    // A new receiver on this thread is not claimed by the old one's claim.
    drop(rx);
    let (tx2, rx2) = completion_channel().expect("eventfd");
    tx2.send(flush_completion(5));
    assert!(readable(&rx2));
}

/// On a memory medium, aio and io_uring run small reads and writes inline
/// (queued by the time `submit` returns), larger ones through the kernel
/// queue (they only appear once the reactor reaps it).
#[test]
fn engines_run_small_memory_io_inline() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipping: no temp dir under /dev/shm");
        return;
    };
    let path = sparse_file(dir.path(), 4 << 20);
    for kind in [StoreKind::Aio, StoreKind::IoUring] {
        let store = open_store(kind, &OpenOptions::new(&path)).expect("open");
        let mut io = Io::new(Arc::clone(&store));
        let small = pattern(11, crate::engine::INLINE_MAX);
        store.submit(IoRequest::new(1, IoOp::Write, 0, buf_from(&small)), &io.tx);
        assert!(!io.rx.is_empty(), "{kind:?}: small write completed inline");
        let c = collect(&mut io.rx, 1);
        assert_eq!(c[0].result, Ok(small.len()));
        let big = pattern(12, crate::engine::INLINE_MAX + 4096);
        store.submit(
            IoRequest::new(2, IoOp::Write, 1 << 20, buf_from(&big)),
            &io.tx,
        );
        assert!(io.rx.is_empty(), "{kind:?}: large write went to the kernel");
        let c = collect(&mut io.rx, 1);
        assert_eq!(c[0].result, Ok(big.len()));
        let (r, buf) = io.read(0, small.len());
        assert_eq!(r, Ok(small.len()));
        assert_eq!(&buf[..], &small[..]);
        let (r, buf) = io.read(1 << 20, big.len());
        assert_eq!(r, Ok(big.len()));
        assert_eq!(&buf[..], &big[..]);
        store.close();
    }
}

/// A read asked by reference is answered with the file itself on a memory
/// medium (the bytes at the reference are the data), and with the data in
/// the buffer elsewhere and by every other engine.
#[test]
fn reads_by_reference_only_from_memory_media() {
    use std::os::unix::fs::FileExt;
    let dirs = [
        tempfile::tempdir_in("/dev/shm").ok(),
        tempfile::tempdir_in("/var/tmp").ok(),
    ];
    for (memory, dir) in [true, false].into_iter().zip(dirs) {
        let Some(dir) = dir else {
            eprintln!("skipping: no temp dir (memory medium: {memory})");
            continue;
        };
        let path = sparse_file(dir.path(), 1 << 20);
        let data = pattern(21, 128 * 1024);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&data, 4096))
            .expect("write the file");
        for kind in [StoreKind::Rdwr, StoreKind::Aio, StoreKind::IoUring] {
            let store = open_store(kind, &OpenOptions::new(&path)).expect("open");
            let mut io = Io::new(Arc::clone(&store));
            let mut buf = AlignedBuf::with_capacity(data.len());
            buf.set_len(data.len());
            let c = io.run_req(IoRequest::new(0, IoOp::Read, 4096, buf).with_by_reference(true));
            assert_eq!(c.result, Ok(data.len()));
            let by_reference = memory && kind != StoreKind::Rdwr;
            match c.file {
                Some(r) => {
                    assert!(by_reference, "{kind:?} on memory: {memory}");
                    assert_eq!(r.offset, 4096);
                    let f = std::fs::File::from(r.file.as_fd().try_clone_to_owned().unwrap());
                    let mut got = vec![0u8; data.len()];
                    f.read_exact_at(&mut got, r.offset).unwrap();
                    assert_eq!(got, data);
                }
                None => {
                    assert!(!by_reference, "{kind:?} on memory: {memory}");
                    assert_eq!(&c.buf[..], &data[..]);
                }
            }
            store.close();
        }
    }
}

#[test]
fn send_sync_bounds() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<CompletionSender>();
    send::<CompletionReceiver>();
    send::<AlignedBuf>();
    send::<BufPool>();
    send_sync::<Arc<dyn BackingStore>>();
}

/// One step of the model-based test.
#[derive(Clone, Debug)]
enum Step {
    Write {
        offset: u64,
        len: usize,
        fua: bool,
        seed: u64,
    },
    Read {
        offset: u64,
        len: usize,
    },
    Flush,
}

const MODEL_SIZE: u64 = 256 * 1024;

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..MODEL_SIZE, 0usize..20_000, any::<bool>(), any::<u64>()).prop_map(
            |(offset, len, fua, seed)| {
                // Writes stay inside the store (the SCSI layer checks LBA ranges).
                let len = len.min((MODEL_SIZE - offset) as usize);
                Step::Write { offset, len, fua, seed }
            }
        ),
        // Reads may run past the end: zero-filled.
        4 => (0..MODEL_SIZE + 8192, 0usize..20_000)
            .prop_map(|(offset, len)| Step::Read { offset, len }),
        1 => Just(Step::Flush),
    ]
}

/// Run `steps` against a store and an in-memory model of its bytes.
fn check_against_model(
    kind: StoreKind,
    opts: &OpenOptions,
    steps: &[Step],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    use proptest::prop_assert_eq;
    let store = open_store(kind, opts).expect("open");
    let mut io = Io::new(Arc::clone(&store));
    let mut model = vec![0u8; MODEL_SIZE as usize];
    for s in steps {
        match *s {
            Step::Write {
                offset,
                len,
                fua,
                seed,
            } => {
                let data = pattern(seed, len);
                prop_assert_eq!(io.write(offset, &data, fua), Ok(len));
                let at = offset as usize;
                model[at..at + len].copy_from_slice(&data);
            }
            Step::Read { offset, len } => {
                let (res, buf) = io.read(offset, len);
                prop_assert_eq!(res, Ok(len));
                let start = (offset.min(MODEL_SIZE)) as usize;
                let end = (offset + len as u64).min(MODEL_SIZE) as usize;
                let inside = end - start;
                prop_assert!(
                    buf[..inside] == model[start..end],
                    "read {}+{}",
                    offset,
                    len
                );
                prop_assert!(
                    buf[inside..].iter().all(|&b| b == 0),
                    "zero fill {}+{}",
                    offset,
                    len
                );
            }
            Step::Flush => prop_assert_eq!(io.flush(), Ok(0)),
        }
    }
    prop_assert_eq!(store.size(), MODEL_SIZE);
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 24, ..Default::default() })]

    #[test]
    fn rdwr_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sparse_file(dir.path(), MODEL_SIZE);
        let opts = OpenOptions { worker_threads: 2, ..OpenOptions::new(&path) };
        check_against_model(StoreKind::Rdwr, &opts, &steps)?;
    }

    #[test]
    fn engines_match_model(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sparse_file(dir.path(), MODEL_SIZE);
        let opts = OpenOptions { worker_threads: 2, ..OpenOptions::new(&path) };
        check_against_model(StoreKind::Aio, &opts, &steps)?;
        sparse_file(dir.path(), MODEL_SIZE); // fresh, all zeros again
        check_against_model(StoreKind::IoUring, &opts, &steps)?;
    }

    /// The engines with O_DIRECT: unaligned steps take the buffered descriptor.
    #[test]
    fn engines_direct_match_model(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = sparse_file(dir.path(), MODEL_SIZE);
        let opts = OpenOptions { direct: true, worker_threads: 2, ..OpenOptions::new(&path) };
        if open_store(StoreKind::Rdwr, &opts).is_err() {
            eprintln!("skipping O_DIRECT model test: O_DIRECT refused under /var/tmp");
            return Ok(());
        }
        check_against_model(StoreKind::Aio, &opts, &steps)?;
        sparse_file(dir.path(), MODEL_SIZE); // fresh, all zeros again
        check_against_model(StoreKind::IoUring, &opts, &steps)?;
    }

    /// Same with O_DIRECT: unaligned steps take the buffered fallback.
    #[test]
    fn rdwr_direct_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = sparse_file(dir.path(), MODEL_SIZE);
        let opts = OpenOptions { direct: true, worker_threads: 2, ..OpenOptions::new(&path) };
        if open_store(StoreKind::Rdwr, &opts).is_err() {
            eprintln!("skipping O_DIRECT model test: O_DIRECT refused under /var/tmp");
            return Ok(());
        }
        check_against_model(StoreKind::Rdwr, &opts, &steps)?;
    }
}

/// The suite on a real block device, when one is given (its contents are
/// overwritten!): `RTGT_BACKING_TEST_BLOCKDEV=/dev/loop0 cargo test`.
#[test]
fn suite_rdwr_block_device() {
    let Some(dev) = std::env::var_os("RTGT_BACKING_TEST_BLOCKDEV") else {
        eprintln!("skipping block device suite: RTGT_BACKING_TEST_BLOCKDEV not set");
        return;
    };
    for direct in [false, true] {
        let opts = OpenOptions {
            direct,
            worker_threads: 4,
            ..OpenOptions::new(&dev)
        };
        store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true, false);
    }
}
