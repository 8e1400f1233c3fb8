//! Fuzzes the stream frame decoder (`[len: u32 LE][payload]`): arbitrary bytes fed in
//! arbitrary chunks must yield frames no longer than the maximum, or an error; never a panic
//! or an allocation above the maximum.
#![no_main]

use actix_tether::frame::FrameCodec;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, wire)) = data.split_first() else {
        return;
    };
    let max = 1usize << (shape % 20); // 1 B ..= 512 KiB
    let chunk = 1 + (shape as usize >> 4); // 1 ..= 16 bytes per read
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= max),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Never more buffered or reserved than the input plus one maximal frame (x2 growth).
        assert!(buf.capacity() <= 4 * (max + 4 + wire.len()) + 1024);
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(frame)) => assert!(frame.len() <= max),
        Ok(None) | Err(_) => {}
    }
});
