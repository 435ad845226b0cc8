//! Record framing for segment files and ack files.
//!
//! A segment record is `len: u32 LE | crc: u32 LE | seq: u64 LE | payload[len]`, where
//! `crc` is CRC-32 (IEEE) over `seq` and the payload. Length + CRC framing lets recovery
//! tell a complete record from a torn one (a crash in the middle of a `write`): the first
//! record whose length runs past the end of the file or whose CRC does not match ends
//! the valid prefix, and the file is truncated there.
//!
//! An ack record is `seq: u64 LE | crc: u32 LE` (12 bytes): "event `seq` is done".

/// Bytes before the payload.
pub const HEADER: usize = 16;
/// Bytes of one ack record.
pub const ACK_LEN: usize = 12;
/// No record payload is larger (the HTTP limits are far below this): a larger length
/// field is treated as corruption rather than trusted for a huge allocation.
pub const MAX_PAYLOAD: usize = 16 << 20;

fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Append one framed record to `out`.
pub fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Size of a framed record with this payload.
pub fn framed_len(payload_len: usize) -> u64 {
    (HEADER + payload_len) as u64
}

/// The result of decoding at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and its total framed length.
    Record {
        seq: u64,
        payload: &'a [u8],
        len: usize,
    },
    /// `buf` ends inside a record (a torn tail, or the caller must read more).
    Incomplete,
    /// The bytes are not a valid record (bad CRC or absurd length).
    Corrupt,
}

pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER + len {
        return Decoded::Incomplete;
    }
    let want = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let payload = &buf[HEADER..HEADER + len];
    if crc(seq, payload) != want {
        return Decoded::Corrupt;
    }
    Decoded::Record {
        seq,
        payload,
        len: HEADER + len,
    }
}

pub fn encode_ack(seq: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&crc(seq, &[]).to_le_bytes());
}

/// The seqs in an ack file's bytes; a torn or corrupt entry ends the list.
pub fn decode_acks(buf: &[u8]) -> Vec<u64> {
    let mut out = Vec::with_capacity(buf.len() / ACK_LEN);
    for chunk in buf.chunks(ACK_LEN) {
        if chunk.len() < ACK_LEN {
            break;
        }
        let seq = u64::from_le_bytes(chunk[0..8].try_into().expect("8 bytes"));
        let want = u32::from_le_bytes(chunk[8..12].try_into().expect("4 bytes"));
        if crc(seq, &[]) != want {
            break;
        }
        out.push(seq);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_tail() {
        let mut buf = Vec::new();
        encode(7, b"hello", &mut buf);
        encode(8, b"world!", &mut buf);
        let Decoded::Record { seq, payload, len } = decode(&buf) else {
            panic!()
        };
        assert_eq!((seq, payload, len), (7, &b"hello"[..], HEADER + 5));
        assert!(matches!(
            decode(&buf[len..]),
            Decoded::Record { seq: 8, .. }
        ));
        assert_eq!(decode(&buf[len..buf.len() - 1]), Decoded::Incomplete);
        let mut bad = buf.clone();
        bad[HEADER + 1] ^= 1;
        assert_eq!(decode(&bad), Decoded::Corrupt);
    }

    #[test]
    fn acks() {
        let mut buf = Vec::new();
        encode_ack(1, &mut buf);
        encode_ack(99, &mut buf);
        buf.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_acks(&buf), vec![1, 99]);
        buf[12] ^= 1;
        assert_eq!(decode_acks(&buf), vec![1]);
    }
}
