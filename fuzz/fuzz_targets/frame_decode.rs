//! Feeds arbitrary bytes to both directions' frame decoders. Anything that
//! decodes must encode and decode again to the same frame.
#![no_main]
#![forbid(unsafe_code)]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sotto_proto::{ClientCodec, ClientFrame, RelayCodec, RelayFrame, decode_payload, encode_frame};
use tokio_util::codec::Decoder;

fn drain<D>(mut codec: D, data: &[u8]) -> Vec<D::Item>
where
    D: Decoder,
{
    let mut buffer = BytesMut::from(data);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        frames.push(frame);
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    for frame in drain(RelayCodec::new(), data) {
        let bytes = encode_frame(&frame).expect("a decoded frame encodes");
        let again: ClientFrame = decode_payload(&bytes[4..]).expect("and decodes again");
        assert_eq!(again, frame);
    }
    for frame in drain(ClientCodec::new(), data) {
        let bytes = encode_frame(&frame).expect("a decoded frame encodes");
        let again: RelayFrame = decode_payload(&bytes[4..]).expect("and decodes again");
        assert_eq!(again, frame);
    }
});
