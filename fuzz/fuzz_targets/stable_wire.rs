//! Fuzzes the stable-session wire decoders: the 28-byte `ClientHello` / `ServerHello`
//! handshakes and the data/ack frames. Arbitrary bytes must decode to a value or a typed
//! error — never a panic — and every hello that parses must re-encode to the same bytes.
#![no_main]

use actix_tether::stable::wire::{Frame, HELLO_LEN};
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
    let _ = Frame::decode(Bytes::copy_from_slice(data));
});
