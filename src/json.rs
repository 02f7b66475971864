//! Protobuf JSON (protojson) for the CLI and tests, through the same descriptor
//! that serves reflection: snake_case and lowerCamelCase field names both parse.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::error::Error;
use crate::proto::FILE_DESCRIPTOR_SET;

fn descriptor(full_name: &str) -> Result<prost_reflect::MessageDescriptor, Error> {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .map_err(|e| Error::Internal(format!("embedded descriptor: {e}")))?;
    pool.get_message_by_name(full_name)
        .ok_or_else(|| Error::Internal(format!("no message {full_name} in the descriptor")))
}

/// Parses protojson into a message of the given full name (e.g. `stepcache.v1.TaskInterface`).
pub fn parse<M: Message + Default>(full_name: &str, json: &str) -> Result<M, Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let dynamic = DynamicMessage::deserialize(descriptor(full_name)?, &mut de)
        .map_err(|e| Error::invalid(format!("not a valid {full_name} in protojson: {e}")))?;
    de.end()
        .map_err(|e| Error::invalid(format!("trailing input after {full_name}: {e}")))?;
    dynamic
        .transcode_to()
        .map_err(|e| Error::Internal(format!("transcoding {full_name}: {e}")))
}

/// Parses a protojson value (already a serde_json::Value).
pub fn from_value<M: Message + Default>(
    full_name: &str,
    v: &serde_json::Value,
) -> Result<M, Error> {
    parse(full_name, &v.to_string())
}

/// Renders a message as protojson with the proto field names, zero values included.
pub fn render<M: Message>(full_name: &str, m: &M) -> Result<serde_json::Value, Error> {
    let mut dynamic = DynamicMessage::new(descriptor(full_name)?);
    dynamic
        .transcode_from(m)
        .map_err(|e| Error::Internal(format!("transcoding {full_name}: {e}")))?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| Error::Internal(format!("rendering {full_name}: {e}")))
}
