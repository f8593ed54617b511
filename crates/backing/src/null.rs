//! `null`: no storage. Reads return zeros, writes are discarded, every request
//! completes at once through the caller's completion channel (tgt
//! `usr/bs_null.c`; useful to measure the target without the medium).

use crate::{BackingStore, CompletionSender, IoCompletion, IoError, IoOp, IoRequest};

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
            tag, op, mut buf, ..
        } = req;
        let result = match op {
            IoOp::Read => {
                // tgt leaves the buffer as it is; ours comes from a pool and may
                // hold another initiator's data, so it must be zeroed.
                buf.zero();
                Ok(buf.len())
            }
            IoOp::Write if self.readonly => Err(IoError::EROFS),
            IoOp::Write => Ok(buf.len()),
            IoOp::Flush => Ok(0),
        };
        done.send(IoCompletion {
            tag,
            op,
            buf,
            result,
        });
    }

    fn close(&self) {}

    fn readonly(&self) -> bool {
        self.readonly
    }
}
