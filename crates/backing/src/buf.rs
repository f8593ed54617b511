//! Page-aligned data buffers and the per-reactor pool they come from.
//!
//! Every data buffer of the command path is page aligned so that any backing
//! store may hand it straight to the kernel, including a file opened with
//! `O_DIRECT` (tgt `--bsoflags direct`), which requires the user buffer to be
//! aligned to the logical block size of the device. 4096 covers every block
//! size a logical unit can have (512 and 4096 bytes, SBC-3 READ CAPACITY (16)).

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Page-aligned (4096) heap buffer, safe for `O_DIRECT`. `Send`, not `Clone`.
/// Derefs to `[u8]` of length [`len`](AlignedBuf::len).
///
/// The whole capacity is always initialised (zeroed at allocation), so
/// [`set_len`](AlignedBuf::set_len) can grow the visible part without unsafe
/// code at the call site; what it then exposes is whatever the buffer held
/// before, which is why stores zero-fill the tail of a short read.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like `Vec<u8>`); moving it
// to another thread moves that ownership, there is no shared interior state.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only gives out `&[u8]`; no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Alignment of every buffer: one page, enough for `O_DIRECT` on 512-byte
    /// and 4096-byte sector devices.
    pub const ALIGN: usize = 4096;

    /// Capacity rounded up to a multiple of [`ALIGN`](AlignedBuf::ALIGN)
    /// (minimum `ALIGN`), memory zeroed, `len = 0`.
    ///
    /// Like `Vec::with_capacity` this panics on capacity overflow and aborts if
    /// the allocator fails; callers bound the size (by negotiated
    /// MaxBurstLength, RFC 7143 §13.13) before asking. See
    /// [`try_with_capacity`](AlignedBuf::try_with_capacity) for a fallible form.
    pub fn with_capacity(capacity: usize) -> AlignedBuf {
        match AlignedBuf::try_with_capacity(capacity) {
            Some(buf) => buf,
            None => panic!("AlignedBuf capacity overflow: {capacity}"),
        }
    }

    /// Like [`with_capacity`](AlignedBuf::with_capacity) but returns `None`
    /// when the rounded capacity does not fit a valid allocation layout.
    pub fn try_with_capacity(capacity: usize) -> Option<AlignedBuf> {
        let capacity = round_up_to_align(capacity)?;
        let layout = Layout::from_size_align(capacity, Self::ALIGN).ok()?;
        // SAFETY: `layout` has a non-zero size (at least ALIGN) as `alloc_zeroed` requires.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Some(AlignedBuf {
            ptr,
            len: 0,
            capacity,
        })
    }

    /// Bytes allocated (a multiple of [`ALIGN`](AlignedBuf::ALIGN)).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes visible through `Deref`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set the visible length. Panics if `len > capacity` (a caller bug, never
    /// peer-driven: the caller sized the buffer).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "AlignedBuf::set_len({len}) beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Zero the visible bytes (`[..len]`).
    pub fn zero(&mut self) {
        self.as_mut_slice().fill(0);
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `capacity` initialised (zeroed at allocation)
        // bytes owned by `self`, and `len <= capacity` is kept by `set_len`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// Round up to a non-zero multiple of `AlignedBuf::ALIGN`, `None` on overflow.
fn round_up_to_align(capacity: usize) -> Option<usize> {
    let wanted = capacity.max(1);
    let rounded = wanted.checked_add(AlignedBuf::ALIGN - 1)? & !(AlignedBuf::ALIGN - 1);
    Some(rounded)
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // The layout was valid at allocation and `capacity` never changes.
        if let Ok(layout) = Layout::from_size_align(self.capacity, Self::ALIGN) {
            // SAFETY: `ptr` was returned by `alloc_zeroed` with this very layout
            // and is freed exactly once, here.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// log2 of the smallest size class (4 KiB).
const MIN_CLASS_SHIFT: u32 = 12;
/// log2 of the largest cached size class (16 MiB: the largest MaxBurstLength,
/// RFC 7143 §13.13, is 2^24 - 1). Larger buffers are allocated and freed
/// each time.
const MAX_CLASS_SHIFT: u32 = 24;
const NUM_CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Each class may cache this many bytes of idle buffers ...
const CACHE_BYTES_PER_CLASS: usize = 8 << 20;
/// ... but at least this many buffers ...
const MIN_CACHED_PER_CLASS: usize = 2;
/// ... and at most this many.
const MAX_CACHED_PER_CLASS: usize = 64;

/// Per-reactor buffer pool (not `Sync`): size classes of powers of two from
/// 4 KiB to 16 MiB, a few idle buffers cached per class, so the steady-state
/// command path allocates nothing (DESIGN.md, "The data path").
///
/// The pool never zeroes: a buffer from [`get`](BufPool::get) may hold an
/// earlier command's data. Stores zero-fill what they do not read, and the
/// protocol layer only sends `[..len]` it has filled.
pub struct BufPool {
    classes: [Vec<AlignedBuf>; NUM_CLASSES],
    /// Keeps the pool `!Sync` (and `!Send` is not needed, so only a Cell).
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool::new()
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached: usize = self.classes.iter().map(Vec::len).sum();
        f.debug_struct("BufPool").field("cached", &cached).finish()
    }
}

impl BufPool {
    /// An empty pool; buffers are allocated on first demand and cached on `put`.
    pub fn new() -> BufPool {
        BufPool {
            classes: std::array::from_fn(|i| Vec::with_capacity(max_cached(class_size(i)))),
            _not_sync: std::marker::PhantomData,
        }
    }

    /// A buffer with `capacity() >= len` and `len() == len`. Contents
    /// unspecified (may hold old data). The caller has already bounded `len`
    /// (by a negotiated limit or the LU size); beyond the largest class the
    /// buffer is allocated exactly and not cached when returned.
    pub fn get(&mut self, len: usize) -> AlignedBuf {
        let mut buf = match class_index_for_len(len) {
            Some(i) => match self.classes[i].pop() {
                Some(buf) => buf,
                None => AlignedBuf::with_capacity(class_size(i)),
            },
            None => AlignedBuf::with_capacity(len),
        };
        buf.set_len(len);
        buf
    }

    /// Give a buffer back. It is cached if its capacity is exactly one of the
    /// size classes and that class is not full; otherwise it is freed.
    pub fn put(&mut self, mut buf: AlignedBuf) {
        let cap = buf.capacity();
        if !cap.is_power_of_two() {
            return;
        }
        let shift = cap.trailing_zeros();
        if !(MIN_CLASS_SHIFT..=MAX_CLASS_SHIFT).contains(&shift) {
            return;
        }
        let i = (shift - MIN_CLASS_SHIFT) as usize;
        let class = &mut self.classes[i];
        if class.len() < max_cached(cap) {
            buf.set_len(0);
            class.push(buf);
        }
    }

    /// Number of idle buffers currently cached (all classes).
    pub fn cached(&self) -> usize {
        self.classes.iter().map(Vec::len).sum()
    }
}

fn class_size(index: usize) -> usize {
    1usize << (MIN_CLASS_SHIFT as usize + index)
}

fn max_cached(class_size: usize) -> usize {
    (CACHE_BYTES_PER_CLASS / class_size).clamp(MIN_CACHED_PER_CLASS, MAX_CACHED_PER_CLASS)
}

/// The size class that holds `len` bytes, `None` if larger than the largest.
fn class_index_for_len(len: usize) -> Option<usize> {
    if len > class_size(NUM_CLASSES - 1) {
        return None;
    }
    let size = len.max(1 << MIN_CLASS_SHIFT).next_power_of_two();
    Some((size.trailing_zeros() - MIN_CLASS_SHIFT) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_capacity_rounds_up_and_zeroes() {
        for (asked, expected) in [
            (0, 4096),
            (1, 4096),
            (4096, 4096),
            (4097, 8192),
            (65536, 65536),
        ] {
            let mut buf = AlignedBuf::with_capacity(asked);
            assert_eq!(buf.capacity(), expected);
            assert_eq!(buf.len(), 0);
            assert!(buf.is_empty());
            assert_eq!(buf.as_ptr() as usize % AlignedBuf::ALIGN, 0);
            buf.set_len(expected);
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn deref_is_len_long() {
        let mut buf = AlignedBuf::with_capacity(8192);
        buf.set_len(100);
        assert_eq!(buf.len(), 100);
        assert_eq!(buf.as_ref().len(), 100);
        buf.as_mut()[99] = 7;
        buf[0] = 1;
        assert_eq!((buf[0], buf[99]), (1, 7));
        buf.zero();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(
            format!("{buf:?}"),
            "AlignedBuf { len: 100, capacity: 8192, .. }"
        );
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn set_len_beyond_capacity_panics() {
        let mut buf = AlignedBuf::with_capacity(1);
        buf.set_len(4097);
    }

    #[test]
    fn try_with_capacity_overflow_is_none() {
        assert!(AlignedBuf::try_with_capacity(usize::MAX).is_none());
        assert!(AlignedBuf::try_with_capacity(usize::MAX - 4000).is_none());
    }

    #[test]
    fn pool_reuses_buffers() {
        let mut pool = BufPool::new();
        let mut a = pool.get(5000);
        assert_eq!(a.len(), 5000);
        assert_eq!(a.capacity(), 8192);
        assert_eq!(a.as_ptr() as usize % AlignedBuf::ALIGN, 0);
        a[0] = 0xAB;
        let addr = a.as_ptr() as usize;
        pool.put(a);
        assert_eq!(pool.cached(), 1);
        // Any length of the same class gets the same buffer back, old data and all.
        let b = pool.get(8192);
        assert_eq!(b.as_ptr() as usize, addr);
        assert_eq!(b[0], 0xAB);
        assert_eq!(b.len(), 8192);
        assert_eq!(pool.cached(), 0);
        // A different class does not.
        let c = pool.get(100);
        assert_eq!(c.capacity(), 4096);
        assert_ne!(c.as_ptr() as usize, addr);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.cached(), 2);
    }

    #[test]
    fn pool_sizes_and_limits() {
        let mut pool = BufPool::new();
        assert_eq!(pool.get(0).capacity(), 4096);
        assert_eq!(pool.get(0).len(), 0);
        assert_eq!(pool.get(1 << 24).capacity(), 1 << 24);
        // Beyond the largest class: exact allocation, not cached.
        let big = pool.get((1 << 24) + 1);
        assert_eq!(big.capacity(), (1 << 24) + 4096);
        pool.put(big);
        assert_eq!(pool.cached(), 0);
        // Odd capacities are not cached.
        pool.put(AlignedBuf::with_capacity(3 * 4096));
        assert_eq!(pool.cached(), 0);
        // A class caches a bounded number of buffers.
        let bufs: Vec<_> = (0..100).map(|_| pool.get(4096)).collect();
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.cached(), MAX_CACHED_PER_CLASS);
        let bufs: Vec<_> = (0..5).map(|_| pool.get(1 << 24)).collect();
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.cached(), MAX_CACHED_PER_CLASS + MIN_CACHED_PER_CLASS);
    }

    #[test]
    fn class_index() {
        assert_eq!(class_index_for_len(0), Some(0));
        assert_eq!(class_index_for_len(4096), Some(0));
        assert_eq!(class_index_for_len(4097), Some(1));
        assert_eq!(class_index_for_len(1 << 24), Some(NUM_CLASSES - 1));
        assert_eq!(class_index_for_len((1 << 24) + 1), None);
        assert_eq!(class_index_for_len(usize::MAX), None);
    }

    proptest::proptest! {
        /// Whatever lengths a reactor asks for (bounded by its limits), the pool
        /// hands out aligned buffers of exactly that length, reuses what it got
        /// back and keeps its cache bounded.
        #[test]
        fn pool_invariants(ops in proptest::collection::vec((proptest::bool::ANY, 0usize..(1 << 20)), 1..40)) {
            let mut pool = BufPool::new();
            let mut held: Vec<AlignedBuf> = Vec::new();
            for (get, len) in ops {
                if get || held.is_empty() {
                    let cached_before = pool.cached();
                    let buf = pool.get(len);
                    proptest::prop_assert_eq!(buf.len(), len);
                    proptest::prop_assert!(buf.capacity() >= len);
                    proptest::prop_assert!(buf.capacity().is_power_of_two());
                    proptest::prop_assert_eq!(buf.as_ptr() as usize % AlignedBuf::ALIGN, 0);
                    proptest::prop_assert!(pool.cached() <= cached_before);
                    held.push(buf);
                } else {
                    let buf = held.swap_remove(len % held.len());
                    let class = class_index_for_len(buf.capacity());
                    let before = class.map(|i| pool.classes[i].len());
                    pool.put(buf);
                    if let (Some(i), Some(before)) = (class, before) {
                        let limit = max_cached(class_size(i));
                        proptest::prop_assert_eq!(pool.classes[i].len(), (before + 1).min(limit));
                    }
                }
            }
            for (i, class) in pool.classes.iter().enumerate() {
                proptest::prop_assert!(class.len() <= max_cached(class_size(i)));
                proptest::prop_assert!(class.iter().all(|b| b.capacity() == class_size(i) && b.is_empty()));
            }
        }
    }
}
