//! Fuzzes the stable-session wire decoders: the 28-byte `ClientHello` / `ServerHello`
//! handshakes and the data, ack and batch frames. Arbitrary bytes must decode to a value or a typed
//! error — never a panic — and every hello that parses must re-encode to the same bytes.
#![no_main]

use actix_tether::stable::wire::{Frame, BATCH_HEADER_LEN, BATCH_ITEM_PREFIX, HELLO_LEN};
use actix_tether::stable::{ClientHello, ServerHello};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = ClientHello::parse(data) {
        assert_eq!(data.len(), HELLO_LEN);
        assert_eq!(&hello.to_bytes()[..], data);
    }
    if let Ok(hello) = ServerHello::parse(data) {
        assert_eq!(data.len(), HELLO_LEN);
        assert_eq!(&hello.to_bytes()[..], data);
    }
    if let Ok(Frame::Batch { items, .. }) = Frame::decode(Bytes::copy_from_slice(data)) {
        // A batch that decodes hands out exactly its entries, which cover the message.
        let n = items.remaining() as usize;
        let bytes = items.remaining_bytes();
        let got: Vec<Bytes> = items.collect();
        assert_eq!(got.len(), n);
        assert_eq!(got.iter().map(Bytes::len).sum::<usize>(), bytes);
        assert_eq!(BATCH_HEADER_LEN + n * BATCH_ITEM_PREFIX + bytes, data.len());
    }
});
