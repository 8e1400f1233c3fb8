//! Codec round trips and decode-error cases, for every codec compiled in.

use std::collections::BTreeMap;

use actix_tether::codec::{Codec, CodecError, Postcard};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Point { x: i64, y: i64 },
    Path(Vec<(f64, f64)>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Message {
    id: u64,
    name: String,
    tags: Vec<String>,
    shape: Shape,
    attrs: BTreeMap<String, u32>,
    blob: Vec<u8>,
    maybe: Option<i16>,
}

fn sample(i: u64) -> Message {
    Message {
        id: i.wrapping_mul(0x9E37_79B9),
        name: format!("message-{i}-ü"),
        tags: (0..i % 4).map(|t| format!("t{t}")).collect(),
        shape: match i % 3 {
            0 => Shape::Unit,
            1 => Shape::Point {
                x: -(i as i64),
                y: i as i64 * 1000,
            },
            _ => Shape::Path(vec![(0.5, -1.5), (i as f64, 2.0)]),
        },
        attrs: (0..i % 3).map(|k| (format!("k{k}"), k as u32)).collect(),
        blob: vec![i as u8; (i % 300) as usize],
        maybe: (i % 2 == 0).then_some(-7),
    }
}

fn round_trips<C: Codec>(codec: C) {
    for i in 0..200 {
        let m = sample(i);
        let len = codec.encoded_len(&m).unwrap();
        let mut buf = vec![0xEE; len];
        codec.encode_into(&m, &mut buf).unwrap();
        assert_eq!(codec.decode::<Message>(&buf).unwrap(), m);
        assert_eq!(codec.encode_to_vec(&m).unwrap(), buf);
    }
    // Empty payload of a unit type.
    assert_eq!(codec.encoded_len(&()).unwrap(), 0);
    codec.decode::<()>(&[]).unwrap();
}

fn decode_errors<C: Codec>(codec: C) {
    let buf = codec.encode_to_vec(&sample(5)).unwrap();
    // Every strict prefix fails cleanly.
    for cut in 0..buf.len() {
        let r = codec.decode::<Message>(&buf[..cut]);
        assert!(matches!(r, Err(CodecError::Decode(_))), "cut {cut}: {r:?}");
    }
    // Trailing bytes are refused.
    let mut longer = buf.clone();
    longer.extend_from_slice(&[0, 1, 2]);
    assert!(matches!(
        codec.decode::<Message>(&longer),
        Err(CodecError::TrailingBytes { extra: 3 })
    ));
    // A hostile collection length (varint near u64::MAX) neither panics nor allocates it.
    let hostile = [
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00,
    ];
    assert!(codec.decode::<Vec<u64>>(&hostile).is_err());
    assert!(codec.decode::<String>(&hostile).is_err());
    // Random garbage never panics.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..2000 {
        let len = (seed % 64) as usize;
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = codec.decode::<Message>(&garbage);
    }
    // A slot of the wrong size is an encode error, not a panic.
    let mut small = vec![0; buf.len() - 1];
    assert!(matches!(
        codec.encode_into(&sample(5), &mut small),
        Err(CodecError::Encode(_))
    ));
}

#[test]
fn postcard_round_trips() {
    round_trips(Postcard);
}

#[test]
fn postcard_decode_errors() {
    decode_errors(Postcard);
}

#[cfg(feature = "bincode")]
#[test]
fn bincode_round_trips() {
    round_trips(actix_tether::codec::Bincode);
}

#[cfg(feature = "bincode")]
#[test]
fn bincode_decode_errors() {
    decode_errors(actix_tether::codec::Bincode);
}

#[cfg(feature = "bincode")]
#[test]
fn bincode_is_the_standard_wire_format() {
    let m = sample(7);
    let ours = actix_tether::codec::Bincode.encode_to_vec(&m).unwrap();
    let theirs = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn postcard_is_the_postcard_wire_format() {
    let m = sample(7);
    assert_eq!(
        Postcard.encode_to_vec(&m).unwrap(),
        postcard::to_allocvec(&m).unwrap()
    );
}
