//! Variable-length integers.
//!
//! Two flavours: plain LEB128 for Plover's own batch fields, and HdrHistogram's
//! "LEB128-64b9B" ZigZag encoding (at most 9 bytes; the 9th carries a full 8 bits) for
//! histogram counts, so that the V2 payload is byte-compatible with other implementations.

use crate::WireError;

/// Appends `value` as LEB128.
pub fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads one LEB128 value and advances `input`. Overlong or overflowing encodings are errors.
#[inline(always)]
pub fn read_u64(input: &mut &[u8]) -> Result<u64, WireError> {
    // Most fields (label indices, codes, small counts) fit in one byte.
    if let Some((&byte, rest)) = input.split_first() {
        if byte & 0x80 == 0 {
            *input = rest;
            return Ok(u64::from(byte));
        }
    }
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = input.split_first().ok_or(WireError::Truncated)?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && bits > 1 {
            return Err(WireError::Malformed("varint overflows 64 bits"));
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed("varint longer than 10 bytes"))
}

/// Appends `value` ZigZag-encoded in HdrHistogram's 9-byte LEB128 form.
pub fn write_zigzag(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    for _ in 0..8 {
        if v >> 7 == 0 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one HdrHistogram ZigZag value and advances `input`.
#[inline(always)]
pub fn read_zigzag(input: &mut &[u8]) -> Result<i64, WireError> {
    let mut v = 0u64;
    // Most histogram counts and short zero runs fit in one byte.
    if let Some((&byte, rest)) = input.split_first() {
        if byte & 0x80 == 0 {
            *input = rest;
            v = u64::from(byte);
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    for i in 0..9 {
        let (&byte, rest) = input
            .split_first()
            .ok_or(WireError::Histogram("truncated count"))?;
        *input = rest;
        if i == 8 {
            v |= u64::from(byte) << 56;
            break;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            break;
        }
    }
    Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_round_trips_edges() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut buf = Vec::new();
            write_u64(&mut buf, v);
            let mut input = &buf[..];
            assert_eq!(read_u64(&mut input).unwrap(), v);
            assert!(input.is_empty());
        }
    }

    #[test]
    fn leb128_rejects_overflow_and_truncation() {
        assert!(read_u64(&mut &[0x80u8][..]).is_err());
        assert!(read_u64(&mut &[0xffu8; 10][..]).is_err());
        assert!(
            read_u64(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..])
                .is_err()
        );
    }

    #[test]
    fn zigzag_round_trips_edges() {
        for v in [0, 1, -1, 63, -64, 1 << 40, -(1 << 40), i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            write_zigzag(&mut buf, v);
            assert!(buf.len() <= 9);
            let mut input = &buf[..];
            assert_eq!(read_zigzag(&mut input).unwrap(), v);
            assert!(input.is_empty());
        }
    }
}
