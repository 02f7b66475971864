// StepcacheClient: a typed client for CacheService and MetadataStoreService,
// over Connect's gRPC transport for Node (HTTP/2, plaintext or TLS).
import { create, fromJson, isMessage, type JsonObject, type JsonValue, toJson } from "@bufbuild/protobuf";
import { durationFromMs, type Value, ValueSchema } from "@bufbuild/protobuf/wkt";
import type { DescService } from "@bufbuild/protobuf";
import { type CallOptions, type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { StepcacheError } from "./errors.js";
import { type InterfaceLike, toInterface } from "./key.js";
import {
  CacheService,
  type GetCachedExecutionResponse,
  type WaitForCachedExecutionResponse,
} from "./gen/stepcache/v1/cache_service_pb.js";
import { MetadataStoreService } from "./gen/stepcache/v1/metadata_store_service_pb.js";
import {
  type Artifact,
  ArtifactSchema,
  type CachePolicy,
  CachePolicySchema,
  type Execution,
  ExecutionState,
  Outcome,
  type Reservation,
  Trigger,
} from "./gen/stepcache/v1/types_pb.js";

export interface ClientOptions {
  /** The namespace of every record this client reads and writes (default "default"). */
  namespace?: string;
  /** Deadline of every call except `wait`, in ms (default 30 000). */
  timeoutMs?: number;
  /** Connect over TLS, verifying the server against Node's default roots (or `ca`). */
  tls?: boolean;
  /** PEM root certificate(s) to verify the server against; implies `tls`. */
  ca?: string | Buffer;
  /**
   * A bearer token for a server run with `--auth-tokens`
   * (`authorization: Bearer ...`). Sent over TLS, or in clear only to loopback.
   */
  token?: string;
  /** More Connect interceptors, outermost first (after the token's). */
  interceptors?: Interceptor[];
}

/** The answer of `getCached` or `wait`. */
export interface CacheResult {
  outcome: Outcome;
  /** True when the task may be skipped and its outputs reused (outcome HIT). */
  hit: boolean;
  cacheKey: string;
  /** Why the lookup missed or was disabled, in words. */
  reason: string;
  /** On a HIT: the original execution. */
  execution?: Execution;
  /** On a HIT: its output artifacts by output name. */
  outputs: Record<string, Artifact[]>;
  /** On a HIT: the original execution's output parameters as JSON values. */
  outputParameters: JsonObject;
  /** On a HIT with `recordCached`: the new CACHED execution. */
  cachedExecution?: Execution;
  /** RESERVED: the caller's reservation; IN_PROGRESS: the holder's. */
  reservation?: Reservation;
}

/** The answer of `putExecution`. */
export interface PutResult {
  executionId: bigint;
  cacheKey: string;
  /** True when this write made the execution servable from cache. */
  published: boolean;
  /** The IDs of the output artifacts, by output name, in order. */
  outputs: Record<string, bigint[]>;
}

/** An output artifact to create; `type` defaults to the interface's output type. */
export interface NewArtifact {
  uri: string;
  type?: string;
  name?: string;
  contentDigest?: string;
  externalId?: string;
  properties?: JsonObject;
}

/** One output artifact: a URI, a `NewArtifact`, or an `Artifact` message (an existing one when its id is set). */
export type OutputLike = string | NewArtifact | Artifact;

export interface GetCachedOptions {
  /** A complete policy; or build one from `trigger`, `enabled` and `maxStalenessMs`. */
  policy?: CachePolicy;
  trigger?: Trigger;
  /** An explicit choice wins over the trigger. */
  enabled?: boolean;
  maxStalenessMs?: number;
  /** On a HIT, record a CACHED execution pointing at the original. */
  recordCached?: boolean;
  /** On a miss, ask for the key's reservation (RESERVED), held for `leaseMs`. */
  reservationOwner?: string;
  leaseMs?: number;
  /** Contexts to associate the CACHED execution with. */
  contextIds?: bigint[];
}

export interface WaitOptions {
  /** Take the reservation over when its holder gives up (RESERVED). */
  reservationOwner?: string;
  leaseMs?: number;
}

export interface PutExecutionOptions {
  state?: ExecutionState;
  outputs?: Record<string, OutputLike | OutputLike[]>;
  outputParameters?: JsonObject;
  properties?: JsonObject;
  /** Makes the write idempotent: the server answers a repeat with the original execution. */
  externalId?: string;
  cacheTtlMs?: number;
  skipPublish?: boolean;
  /** The owner of the key's reservation, released by this write. */
  reservationOwner?: string;
  contextIds?: bigint[];
}

function values(m: JsonObject | undefined): Record<string, Value> {
  return Object.fromEntries(Object.entries(m ?? {}).map(([k, v]) => [k, fromJson(ValueSchema, v as JsonValue)]));
}

function reservation(owner: string | undefined, leaseMs: number | undefined) {
  if (owner === undefined) {
    if (leaseMs !== undefined) throw new TypeError("leaseMs needs a reservationOwner");
    return undefined;
  }
  return { owner, lease: leaseMs === undefined ? undefined : durationFromMs(leaseMs) };
}

function cacheResult(resp: GetCachedExecutionResponse | WaitForCachedExecutionResponse): CacheResult {
  const params = resp.execution?.outputParameters ?? {};
  return {
    outcome: resp.outcome,
    hit: resp.outcome === Outcome.HIT,
    cacheKey: resp.cacheKey,
    reason: resp.reason,
    execution: resp.execution,
    outputs: Object.fromEntries(Object.entries(resp.outputArtifacts).map(([k, v]) => [k, v.artifacts])),
    outputParameters: Object.fromEntries(Object.entries(params).map(([k, v]) => [k, toJson(ValueSchema, v)])),
    cachedExecution: resp.cachedExecution,
    reservation: resp.reservation,
  };
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "[::1]" || host.startsWith("127.");
}

/** Bearer-token call credentials, as an interceptor (Connect's way of adding headers). */
function bearer(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** A Connect client whose unary methods throw `StepcacheError` subclasses. */
function typedClient<S extends DescService>(service: S, transport: Transport, defaultTimeoutMs: number): Client<S> {
  type Unary = (request: unknown, options?: CallOptions) => Promise<unknown>;
  const raw = createClient(service, transport) as Record<string, Unary>;
  const wrapped: Record<string, unknown> = {};
  for (const method of service.methods) {
    const call = raw[method.localName]!;
    wrapped[method.localName] =
      method.methodKind === "unary"
        ? async (request: unknown, options?: CallOptions) => {
            const start = Date.now();
            try {
              return await call(request, options);
            } catch (e) {
              const timeoutMs = options?.timeoutMs ?? defaultTimeoutMs;
              throw StepcacheError.fromError(e, timeoutMs > 0 && Date.now() - start >= timeoutMs);
            }
          }
        : call;
  }
  return wrapped as Client<S>;
}

/**
 * A connection to a stepcache server, bound to one namespace.
 *
 * ```ts
 * const sc = new StepcacheClient("127.0.0.1:50051", { namespace: "team-a" });
 * const hit = await sc.getCached({ component: "prepare", parameters: { rows: 100 } });
 * sc.close();
 * ```
 *
 * `cache` and `metadata` are the generated Connect clients of both services,
 * for the calls this layer does not wrap; they throw the same typed errors.
 */
export class StepcacheClient {
  readonly namespace: string;
  readonly timeoutMs: number;
  readonly cache: Client<typeof CacheService>;
  readonly metadata: Client<typeof MetadataStoreService>;
  private readonly sessions: Http2SessionManager;

  /** Connects (lazily) to `address` (host:port). */
  constructor(address: string, options: ClientOptions = {}) {
    this.namespace = options.namespace ?? "default";
    this.timeoutMs = options.timeoutMs ?? 30_000;
    const tls = options.tls === true || options.ca !== undefined;
    const baseUrl = `${tls ? "https" : "http"}://${address}`;
    const host = new URL(baseUrl).hostname;
    if (options.token !== undefined && !tls && !isLoopback(host)) {
      throw new TypeError(`a token is sent only over TLS (tls or ca), or to loopback: ${address}`);
    }
    this.sessions = new Http2SessionManager(baseUrl, undefined, options.ca !== undefined ? { ca: options.ca } : {});
    const interceptors = [...(options.token !== undefined ? [bearer(options.token)] : []), ...(options.interceptors ?? [])];
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.sessions,
      interceptors,
      defaultTimeoutMs: this.timeoutMs,
    });
    this.cache = typedClient(CacheService, transport, this.timeoutMs);
    this.metadata = typedClient(MetadataStoreService, transport, this.timeoutMs);
  }

  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void {
    this.sessions.abort();
  }

  /** The server's cache key of `iface` (`cacheKey` computes it offline). */
  async computeKey(iface: InterfaceLike): Promise<string> {
    return (await this.cache.computeCacheKey({ interface: toInterface(iface) })).cacheKey;
  }

  /** Looks the task up: HIT, MISS, DISABLED, RESERVED or IN_PROGRESS. */
  async getCached(iface: InterfaceLike, options: GetCachedOptions = {}): Promise<CacheResult> {
    let policy = options.policy;
    if (policy !== undefined) {
      if (options.trigger !== undefined || options.enabled !== undefined || options.maxStalenessMs !== undefined) {
        throw new TypeError("give either policy or trigger/enabled/maxStalenessMs, not both");
      }
    } else {
      policy = create(CachePolicySchema, {
        trigger: options.trigger ?? Trigger.UNSPECIFIED,
        enabled: options.enabled,
        maxStaleness: options.maxStalenessMs === undefined ? undefined : durationFromMs(options.maxStalenessMs),
      });
    }
    const resp = await this.cache.getCachedExecution({
      namespace: this.namespace,
      target: { case: "interface", value: toInterface(iface) },
      policy,
      recordCachedExecution: options.recordCached ?? false,
      reservation: reservation(options.reservationOwner, options.leaseMs),
      contextIds: options.contextIds ?? [],
    });
    return cacheResult(resp);
  }

  /** Waits up to `timeoutMs` until the key's result is published (HIT), its holder gives up, or the time is up. */
  async wait(cacheKey: string, timeoutMs: number, options: WaitOptions = {}): Promise<CacheResult> {
    const resp = await this.cache.waitForCachedExecution(
      {
        namespace: this.namespace,
        cacheKey,
        timeout: durationFromMs(timeoutMs),
        reservation: reservation(options.reservationOwner, options.leaseMs),
      },
      // The call's own deadline leaves the server time to answer after its timeout.
      { timeoutMs: timeoutMs + this.timeoutMs },
    );
    return cacheResult(resp);
  }

  /**
   * Records an execution and its outputs in one atomic write. A COMPLETE
   * execution becomes servable from cache unless `skipPublish`; a new
   * artifact's type defaults to the interface's `outputArtifacts[name]`.
   */
  async putExecution(iface: InterfaceLike, options: PutExecutionOptions = {}): Promise<PutResult> {
    const ti = toInterface(iface);
    const outputs = Object.entries(options.outputs ?? {}).flatMap(([name, value]) =>
      (Array.isArray(value) ? value : [value]).map((a) => ({
        name,
        artifact: this.artifact(a, ti.outputArtifacts[name] ?? ""),
      })),
    );
    const resp = await this.metadata.putExecution({
      execution: {
        namespace: this.namespace,
        externalId: options.externalId ?? "",
        interface: ti,
        state: options.state ?? ExecutionState.COMPLETE,
        outputParameters: values(options.outputParameters),
        properties: values(options.properties),
        cacheTtl: options.cacheTtlMs === undefined ? undefined : durationFromMs(options.cacheTtlMs),
      },
      outputs,
      skipPublish: options.skipPublish ?? false,
      reservationOwner: options.reservationOwner ?? "",
      contextIds: options.contextIds ?? [],
    });
    const ids: Record<string, bigint[]> = {};
    outputs.forEach((out, i) => {
      const id = resp.outputArtifactIds[i];
      if (id !== undefined) (ids[out.name] ??= []).push(id);
    });
    return { executionId: resp.executionId, cacheKey: resp.cacheKey, published: resp.published, outputs: ids };
  }

  /** Renews `owner`'s reservation of `cacheKey` for `leaseMs` from now (FailedPreconditionError when not held). */
  async extendReservation(cacheKey: string, owner: string, leaseMs: number): Promise<Reservation | undefined> {
    const resp = await this.cache.extendReservation({
      namespace: this.namespace,
      cacheKey,
      owner,
      lease: durationFromMs(leaseMs),
    });
    return resp.reservation;
  }

  /** Gives `owner`'s reservation of `cacheKey` up; one waiter takes it over. */
  async releaseReservation(cacheKey: string, owner: string): Promise<void> {
    await this.cache.releaseReservation({ namespace: this.namespace, cacheKey, owner });
  }

  /** The ID of the context `(type, name)` in this namespace, created when new. */
  async putContext(type: string, name: string, properties?: JsonObject): Promise<bigint> {
    const resp = await this.metadata.putContexts({
      contexts: [{ namespace: this.namespace, type, name, properties: values(properties) }],
    });
    const [id] = resp.contextIds;
    if (id === undefined) throw new StepcacheError("PutContexts answered no ID");
    return id;
  }

  /** The artifacts with these IDs in this namespace (NotFoundError for any other). */
  async getArtifacts(ids: bigint[]): Promise<Artifact[]> {
    return (await this.metadata.getArtifacts({ ids, namespace: this.namespace })).artifacts;
  }

  private artifact(a: OutputLike, defaultType: string): Artifact {
    if (isMessage(a, ArtifactSchema)) return a;
    const n: NewArtifact = typeof a === "string" ? { uri: a } : a;
    return create(ArtifactSchema, {
      namespace: this.namespace,
      type: n.type || defaultType,
      name: n.name ?? "",
      uri: n.uri,
      externalId: n.externalId ?? "",
      contentDigest: n.contentDigest ?? "",
      properties: values(n.properties),
    });
  }
}
