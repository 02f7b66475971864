//! Pieces of decoding that the hand-written messages (lookup_request.rs,
//! lookup_reply.rs) share, as generated code has them.

use prost::bytes::Buf;
use prost::encoding::{message, DecodeContext, WireType};
use prost::{DecodeError, Message};

/// Merges a message field into its slot.
pub fn merge_optional<M: Message + Default>(
    slot: &mut Option<M>,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    message::merge(wire_type, slot.get_or_insert_with(M::default), buf, ctx)
}

/// Adds where a decode error happened (message and field) to it.
pub fn at(message: &'static str, field: &'static str) -> impl FnOnce(DecodeError) -> DecodeError {
    move |mut e| {
        e.push(message, field);
        e
    }
}
