// stepcache for Node: a typed client of both services, the offline cache key,
// typed errors. The generated messages and service descriptors are re-exported
// from "./gen" (protobuf-es v2: `create(ArtifactSchema, {...})`, enums).
export * from "./client.js";
export * from "./errors.js";
export * from "./key.js";
export * from "./gen/stepcache/v1/types_pb.js";
export * from "./gen/stepcache/v1/cache_service_pb.js";
export * from "./gen/stepcache/v1/metadata_store_service_pb.js";
