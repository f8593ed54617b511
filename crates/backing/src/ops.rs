//! Argument checks and byte helpers the engines share for the SBC-3 store
//! ops beyond read/write/flush, so every engine rejects the same requests
//! with the same errno.

use crate::{CopySource, IoError};

/// The chunk size of ops that loop over a range (WriteSame, Compare, Copy,
/// the zero-writing Unmap fallback): one scratch buffer of at most this many
/// bytes per request.
pub(crate) const CHUNK: usize = 1 << 20;

/// A request length as `usize` (it is reported back as `Ok(len)`).
pub(crate) fn len_usize(len: u64) -> Result<usize, IoError> {
    usize::try_from(len).map_err(|_| IoError::EINVAL)
}

/// WriteSame and Compare: `len` must be whole repetitions of a non-empty
/// pattern (SBC-3 §5.42: the data-out buffer is one logical block; §5.31
/// BYTCHK=3 likewise). `len == 0` is fine with any pattern.
pub(crate) fn check_pattern(len: u64, pattern: &[u8]) -> Result<(), IoError> {
    if len == 0 {
        return Ok(());
    }
    if pattern.is_empty() || len % pattern.len() as u64 != 0 {
        return Err(IoError::EINVAL);
    }
    Ok(())
}

/// CompareAndWrite: the buffer is the verify half then the write half
/// (SBC-3 §5.3: the data-out buffer holds 2 × NUMBER OF LOGICAL BLOCKS).
pub(crate) fn split_compare_and_write(buf: &[u8]) -> Result<(&[u8], &[u8]), IoError> {
    if buf.len() % 2 != 0 {
        return Err(IoError::EINVAL);
    }
    Ok(buf.split_at(buf.len() / 2))
}

/// Copy: a source is given and both ranges lie inside their stores
/// (SPC-4 §6.4.6: a segment past the end of a copy target is an error).
pub(crate) fn check_copy(
    source: Option<&CopySource>,
    offset: u64,
    len: u64,
    dest_size: u64,
) -> Result<&CopySource, IoError> {
    let source = source.ok_or(IoError::EINVAL)?;
    let inside = |at: u64, size: u64| at.checked_add(len).is_some_and(|end| end <= size);
    if !inside(source.offset, source.store.size()) || !inside(offset, dest_size) {
        return Err(IoError::EINVAL);
    }
    Ok(source)
}

/// Index of the first byte where `a` and `b` differ (over the shorter length).
pub(crate) fn mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Compare `len` bytes of `pattern` repeated with a medium of zeros:
/// the number of leading bytes equal.
pub(crate) fn compare_with_zeros(pattern: &[u8], len: u64) -> u64 {
    match pattern.iter().position(|&b| b != 0) {
        Some(at) => (at as u64).min(len),
        None => len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(check_pattern(0, &[]), Ok(()));
        assert_eq!(check_pattern(512, &[]), Err(IoError::EINVAL));
        assert_eq!(check_pattern(1024, &[0; 512]), Ok(()));
        assert_eq!(check_pattern(1000, &[0; 512]), Err(IoError::EINVAL));
        assert_eq!(split_compare_and_write(&[1, 2, 3]), Err(IoError::EINVAL));
        assert_eq!(
            split_compare_and_write(&[1, 2, 3, 4]),
            Ok((&[1u8, 2][..], &[3u8, 4][..]))
        );
        assert_eq!(mismatch(b"abc", b"abc"), None);
        assert_eq!(mismatch(b"abc", b"abd"), Some(2));
        assert_eq!(compare_with_zeros(&[0, 0, 7, 0], 8), 2);
        assert_eq!(compare_with_zeros(&[0; 4], 8), 8);
        assert_eq!(compare_with_zeros(&[0, 0, 7, 0], 1), 1);
    }
}
