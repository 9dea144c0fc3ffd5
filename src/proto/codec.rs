//! The protobuf codec of attestd's gRPC services and clients: prost's, with
//! smaller buffers.
//!
//! tonic gives every response stream an 8 KiB encode buffer (and every
//! request one to decode into) for as long as the stream is open. Workload
//! API messages are a few KiB at most, and an open `FetchX509SVID` stream
//! keeps its buffer between rotations, so with thousands of streams open
//! that default is most of what each one costs. A buffer still grows to fit
//! a larger message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes each encode or decode buffer starts with: an X.509-SVID response
/// with one SVID, its key and the bundle fits.
const BUFFER_BYTES: usize = 2048;
/// When a streaming encoder yields to flush (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }
}
