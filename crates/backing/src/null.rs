//! `null`: no storage. Reads return zeros, writes are discarded, every request
//! completes at once through the caller's completion channel (tgt
//! `usr/bs_null.c`; useful to measure the target without the medium).
//!
//! The SBC-3 ops follow from "the medium is all zeros and keeps nothing":
//! Unmap, WriteSame, OrWrite and Copy succeed and discard, CompareAndWrite
//! and Compare compare against zeros, Extents reports one mapped extent.

use crate::ops::{
    check_copy, check_pattern, compare_with_zeros, len_usize, split_compare_and_write,
};
use crate::{BackingStore, CompletionSender, Extent, IoCompletion, IoError, IoOp, IoRequest};

/// The size a null store reports: 1 TiB, tgt's `NULL_BS_DEV_SIZE` (`1ULL << 40`
/// in fujita/tgt `usr/bs_null.c`), so READ CAPACITY matches tgt's.
pub const NULL_STORE_SIZE: u64 = 1 << 40;

/// The null engine.
#[derive(Debug)]
pub(crate) struct NullStore {
    readonly: bool,
}

impl NullStore {
    pub(crate) fn new(readonly: bool) -> NullStore {
        NullStore { readonly }
    }

    /// One mapped extent from `offset` to the end of the store or of `len`.
    fn extents(&self, offset: u64, len: u64, buf: &mut [u8]) -> usize {
        let covered = len.min(NULL_STORE_SIZE.saturating_sub(offset));
        if covered == 0 || buf.len() < Extent::RECORD_LEN {
            return 0;
        }
        Extent {
            len: covered,
            mapped: true,
        }
        .encode(buf);
        Extent::RECORD_LEN
    }
}

impl BackingStore for NullStore {
    fn name(&self) -> &'static str {
        "null"
    }

    fn size(&self) -> u64 {
        NULL_STORE_SIZE
    }

    fn submit(&self, req: IoRequest, done: &CompletionSender) {
        let IoRequest {
            tag,
            op,
            offset,
            mut buf,
            len,
            source,
            ..
        } = req;
        let result = match op {
            _ if self.readonly && op.modifies_medium() => Err(IoError::EROFS),
            IoOp::Read => {
                // tgt leaves the buffer as it is; ours comes from a pool and may
                // hold another initiator's data, so it must be zeroed.
                buf.zero();
                Ok(buf.len())
            }
            IoOp::Write | IoOp::WriteAtomic | IoOp::OrWrite => Ok(buf.len()),
            IoOp::Flush => Ok(0),
            IoOp::Unmap => len_usize(len),
            IoOp::WriteSame => check_pattern(len, &buf).and_then(|()| len_usize(len)),
            IoOp::CompareAndWrite => split_compare_and_write(&buf)
                .and_then(|(verify, _)| len_usize(compare_with_zeros(verify, verify.len() as u64))),
            IoOp::Compare => {
                check_pattern(len, &buf).and_then(|()| len_usize(compare_with_zeros(&buf, len)))
            }
            IoOp::Extents => Ok(self.extents(offset, len, &mut buf)),
            IoOp::Copy => check_copy(source.as_ref(), offset, len, NULL_STORE_SIZE)
                .and_then(|_| len_usize(len)),
        };
        done.send(IoCompletion {
            file: None,
            tag,
            op,
            buf,
            result,
        });
    }

    fn close(&self) {}

    fn read_blocking(&self, _offset: u64, buf: &mut [u8]) -> Result<usize, IoError> {
        buf.fill(0);
        Ok(buf.len())
    }

    fn readonly(&self) -> bool {
        self.readonly
    }
}
