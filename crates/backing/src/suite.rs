//! The shared store suite: one function every engine must pass (the
//! firecracker / cloud-hypervisor pattern, DESIGN.md "Style"). A new engine
//! adds one `#[test]` that calls [`store_suite`] with its opener.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{
    completion_channel, open_store, AlignedBuf, BackingError, BackingStore, BufPool,
    CompletionReceiver, CompletionSender, IoCompletion, IoError, IoOp, IoRequest, OpenOptions,
    StoreKind,
};

const WAIT: Duration = Duration::from_secs(30);

type Opener<'a> = &'a dyn Fn(&OpenOptions) -> Result<Arc<dyn BackingStore>, BackingError>;

/// Block until the receiver's eventfd is readable, then drain it.
fn wait_drain(rx: &mut CompletionReceiver, out: &mut Vec<IoCompletion>, deadline: Instant) {
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
        let tag = self.next_tag;
        self.next_tag += 1;
        self.store
            .submit(IoRequest::new(tag, op, offset, buf).with_fua(fua), &self.tx);
        let mut done = collect(&mut self.rx, 1);
        let c = done.pop().expect("one completion");
        assert_eq!(c.tag, tag);
        assert_eq!(c.op, op);
        c
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

/// The suite. `opts` describes a store of at least 1 MiB that may be written;
/// `persistent` says whether reads return what was written (false for null,
/// which reads zeros).
pub(crate) fn store_suite(open: Opener<'_>, opts: &OpenOptions, persistent: bool) {
    let store = open(opts).expect("open store");
    let size = store.size();
    assert!(size >= 1 << 20, "suite needs a store of at least 1 MiB");
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

    // close: idempotent; later requests still complete (with an error for
    // engines that really stop), exactly once, buffer handed back.
    store.close();
    store.close();
    let mut buf = AlignedBuf::with_capacity(4096);
    buf.set_len(512);
    let c = io.run(IoOp::Read, 0, buf, false);
    assert_eq!(c.buf.len(), 512);
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
    ro.close();
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
    store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true);
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
    store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true);
}

#[test]
fn suite_null() {
    let opts = OpenOptions::new("");
    store_suite(&|o| open_store(StoreKind::Null, o), &opts, false);
}

/// O_DIRECT on a real file system (/var/tmp; tmpfs refuses O_DIRECT).
#[test]
fn suite_rdwr_direct() {
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
    match open_store(StoreKind::Rdwr, &opts) {
        Err(BackingError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipping O_DIRECT test: file system under /var/tmp refuses O_DIRECT");
            return;
        }
        Err(e) => panic!("open O_DIRECT: {e}"),
        Ok(store) => drop(store),
    }
    store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true);

    // A file whose length is not a multiple of 512: the tail is read through
    // the buffered fallback and the rest zero-filled.
    let odd = dir.path().join("odd.img");
    let data = pattern(7, 4096 + 100);
    std::fs::write(&odd, &data).expect("write odd");
    let store = open_store(
        StoreKind::Rdwr,
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
    for bad in ["", "RDWR", "aio ", "bsg", "io_uring"] {
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
        tag: 9,
        op: IoOp::Read,
        buf: AlignedBuf::with_capacity(0),
        result: Err(IoError::EIO),
    });
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
    opts: &OpenOptions,
    steps: &[Step],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    use proptest::prop_assert_eq;
    let store = open_store(StoreKind::Rdwr, opts).expect("open");
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
        check_against_model(&opts, &steps)?;
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
        check_against_model(&opts, &steps)?;
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
        store_suite(&|o| open_store(StoreKind::Rdwr, o), &opts, true);
    }
}
