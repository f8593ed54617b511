//! A bounded writer for data-in: counts the full length a command would return while
//! writing only what fits in the ALLOCATION LENGTH and the caller's buffer (SPC-4 §4.2.5.6).

pub(crate) struct Out<'a> {
    buf: &'a mut [u8],
    /// ALLOCATION LENGTH (or other cap) of the command.
    limit: usize,
    /// Bytes the command would return if nothing truncated it.
    full: usize,
}

impl<'a> Out<'a> {
    pub(crate) fn new(buf: &'a mut [u8], limit: usize) -> Out<'a> {
        Out {
            buf,
            limit,
            full: 0,
        }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let cap = self.limit.min(self.buf.len());
        if self.full < cap {
            let n = bytes.len().min(cap - self.full);
            if let (Some(dst), Some(src)) =
                (self.buf.get_mut(self.full..self.full + n), bytes.get(..n))
            {
                dst.copy_from_slice(src);
            }
        }
        self.full = self.full.saturating_add(bytes.len());
    }

    /// The data-in length to report: what the device server returns, i.e. the full
    /// data truncated to the allocation length (not to the caller's buffer).
    pub(crate) fn finish(self) -> usize {
        self.full.min(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_limit_and_buffer() {
        let mut b = [0u8; 4];
        let mut o = Out::new(&mut b, 6);
        o.put(&[1, 2, 3]);
        o.put(&[4, 5, 6, 7]);
        assert_eq!(o.finish(), 6);
        assert_eq!(b, [1, 2, 3, 4]);
        let mut b = [0u8; 8];
        let mut o = Out::new(&mut b, 2);
        o.put(&[1, 2, 3]);
        assert_eq!(o.finish(), 2);
        assert_eq!(b[..3], [1, 2, 0]);
    }
}
