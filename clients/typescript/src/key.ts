// The cache key of a task interface, computed offline: the lowercase hex of
// BLAKE3-256 over a canonical, byte-by-byte encoding of the interface
// (docs/key.md in the repository, v1). It equals the server's ComputeCacheKey,
// so a driver can log or look keys up without a round trip.
import { fromJson, isMessage, type JsonObject } from "@bufbuild/protobuf";
import type { Value } from "@bufbuild/protobuf/wkt";
import { blake3 } from "@noble/hashes/blake3.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import { type TaskInterface, TaskInterfaceSchema } from "./gen/stepcache/v1/types_pb.js";

export const DOMAIN_TAG = "stepcache/task-interface/v1";

/**
 * A `TaskInterface` message, or the same in protojson (snake_case or
 * lowerCamelCase field names, artifact IDs as numbers or strings).
 */
export type InterfaceLike = TaskInterface | JsonObject;

/** The interface cannot be keyed; the server answers INVALID_ARGUMENT for it. */
export class InvalidInterfaceError extends Error {
  override name = "InvalidInterfaceError";
}

/** `iface` as a `TaskInterface` message (parsing protojson). */
export function toInterface(iface: InterfaceLike): TaskInterface {
  if (isMessage(iface, TaskInterfaceSchema)) {
    return iface;
  }
  try {
    return fromJson(TaskInterfaceSchema, iface);
  } catch (e) {
    throw new InvalidInterfaceError(`interface: ${e instanceof Error ? e.message : String(e)}`);
  }
}

const utf8 = new TextEncoder();

/** Compares byte strings as unsigned bytes: the order of map keys. */
function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i]! - b[i]!;
  }
  return a.length - b.length;
}

/** Appends the encoding's primitives to one growing list of chunks. */
class Encoder {
  private readonly chunks: Uint8Array[] = [];

  bytes(b: Uint8Array): this {
    this.chunks.push(b);
    return this;
  }

  u32(n: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n);
    return this.bytes(b);
  }

  str(s: string): this {
    const b = utf8.encode(s);
    return this.u32(b.length).bytes(b);
  }

  i64(x: bigint): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, x);
    return this.bytes(b);
  }

  list<T>(xs: readonly T[], f: (x: T, i: number) => void): this {
    this.u32(xs.length);
    xs.forEach(f);
    return this;
  }

  /** Keys in ascending order of their UTF-8 bytes. */
  map<T>(m: { readonly [key: string]: T }, f: (v: T, key: string) => void): this {
    const keys = Object.keys(m)
      .map((k) => [utf8.encode(k), k] as const)
      .sort((a, b) => compareBytes(a[0], b[0]));
    this.u32(keys.length);
    for (const [bytes, k] of keys) {
      this.u32(bytes.length).bytes(bytes);
      f(m[k]!, k);
    }
    return this;
  }

  value(v: Value | undefined, path: string): this {
    const kind = v?.kind;
    switch (kind?.case) {
      case undefined:
      case "nullValue":
        return this.bytes(Uint8Array.of(0));
      case "boolValue":
        return this.bytes(Uint8Array.of(1, kind.value ? 1 : 0));
      case "numberValue": {
        if (!Number.isFinite(kind.value)) {
          throw new InvalidInterfaceError(`${path}: NaN and infinities are not allowed`);
        }
        const b = new Uint8Array(9);
        b[0] = 2;
        new DataView(b.buffer).setFloat64(1, kind.value + 0); // -0 + 0 is +0
        return this.bytes(b);
      }
      case "stringValue":
        return this.bytes(Uint8Array.of(3)).str(kind.value);
      case "listValue":
        this.bytes(Uint8Array.of(4));
        return this.list(kind.value.values, (item, i) => void this.value(item, `${path}[${i}]`));
      case "structValue":
        this.bytes(Uint8Array.of(5));
        return this.map(kind.value.fields, (item, k) => void this.value(item, `${path}.${k}`));
    }
  }

  concat(): Uint8Array {
    const out = new Uint8Array(this.chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

function without<T>(m: { readonly [key: string]: T }, ignored: ReadonlySet<string>): { [key: string]: T } {
  return Object.fromEntries(Object.entries(m).filter(([k]) => !ignored.has(k)));
}

/** The exact bytes that are hashed into the key. */
export function canonicalBytes(iface: InterfaceLike): Uint8Array {
  const ti = toInterface(iface);
  if (ti.component === "") {
    throw new InvalidInterfaceError("interface.component must not be empty");
  }
  const ignored = new Set(ti.ignoreInputs);
  const c = ti.container;
  const volumes = [...new Set(c?.volumes ?? [])]
    .map((v) => utf8.encode(v))
    .sort(compareBytes);
  const e = new Encoder();
  e.str(DOMAIN_TAG).str(ti.component).str(ti.cacheVersion).str(c?.image ?? "");
  e.list(c?.command ?? [], (s) => void e.str(s));
  e.list(c?.args ?? [], (s) => void e.str(s));
  e.map(c?.env ?? {}, (s) => void e.str(s));
  e.list(volumes, (v) => void e.u32(v.length).bytes(v));
  e.map(without(ti.parameters, ignored), (v, k) => void e.value(v, `interface.parameters.${k}`));
  e.map(without(ti.inputArtifacts, ignored), (a) => void e.list(a.ids, (id) => void e.i64(id)));
  e.map(ti.outputArtifacts, (s) => void e.str(s));
  e.map(ti.outputParameters, (s) => void e.str(s));
  return e.concat();
}

/**
 * The cache key: 64 lowercase hex digits of BLAKE3-256(canonicalBytes).
 * Throws `InvalidInterfaceError` for an empty component, a NaN or infinite
 * parameter, or JSON that is not a `TaskInterface`.
 */
export function cacheKey(iface: InterfaceLike): string {
  return bytesToHex(blake3(canonicalBytes(iface)));
}
